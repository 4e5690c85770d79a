"""Run a batch stage over records on Ray (or in-process), writing each finished batch to the ledger.

The stage is a plain module-level function ``fn(records, **kwargs) -> records`` (pickled by
reference, so nothing unpicklable crosses to the workers and the same function runs in a unit
test). Ray is imported here and nowhere outside ``pipelines/``.
At most ``2 x workers`` batches are in flight, so memory does not grow with the corpus; each
result is journaled as soon as it arrives, so a kill -9 loses only batches still running.
"""
from __future__ import annotations

import copy
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterable

from tqdm import tqdm

from laion_audio.records import FailureCode, Record

log = logging.getLogger(__name__)


def run_batch(fn: Callable, records: list[Record], kwargs: dict) -> list[Record]:
    """Call the stage; a crash of the whole batch becomes a typed failure per record."""
    try:
        out = fn(records, **kwargs)
    except Exception as exc:  # noqa: BLE001 - one bad batch must not end the run
        log.exception("batch of %d failed in %s", len(records), fn.__name__)
        return [copy.copy(r).fail(fn.__name__, FailureCode.INTERNAL, f"{type(exc).__name__}: {exc}")
                for r in records]
    if len(out) != len(records):
        raise RuntimeError(f"{fn.__name__} returned {len(out)} records for {len(records)}")
    return out


#: a stage with at most this many records to do runs in this process unless Ray is already
#: up or --ray-address names a cluster: starting a local Ray costs ~10 s, more than such a
#: stage takes (a one-file transcode: 14.7 s on Ray vs 1.3 s in-process)
SMALL_JOB_RECORDS = 32


@dataclass
class Executor:
    """Where batches run. ``ray_address=None`` starts a local Ray with ``workers`` CPUs, but
    only for a stage with more than :data:`SMALL_JOB_RECORDS` records (smaller ones run in this
    process); ``"auto"`` or ``"host:port"`` joins a running cluster; ``inline=True`` always
    runs in this process (debugging, and the unit tests of single stages)."""

    workers: int = max(1, os.cpu_count() or 1)
    ray_address: str | None = None
    inline: bool = False
    _ray_started: bool = False

    def start(self) -> None:
        """Ray is wanted: joined now for a cluster, started on the first big stage when local."""
        if self.inline:
            return
        if self.ray_address:
            self._start_ray()

    def _runs_inline(self, total: int) -> bool:
        if self.inline or self._ray_started or self.ray_address:
            return self.inline
        return total <= SMALL_JOB_RECORDS

    def _start_ray(self) -> None:
        if not self.ray_address and "ray" not in sys.modules:
            # our own local cluster: token auth on, said explicitly so Ray does not warn on
            # every run (a user's own RAY_AUTH_MODE wins). Only before Ray is first imported:
            # Ray reads its auth mode at import, and a driver whose mode differs from the one
            # its GCS inherits from the environment cannot connect to it.
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        import ray

        if ray.is_initialized():
            return
        import crawlers
        import laion_audio
        import pipelines

        kwargs = dict(include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING,
                      # ship our code to every node, so a cluster needs only the dependencies
                      runtime_env={"py_modules": [laion_audio, crawlers, pipelines],
                                   "env_vars": {"RAY_DEDUP_LOGS": "0"}})
        if self.ray_address:
            ray.init(address=self.ray_address, **kwargs)
        else:
            ray.init(num_cpus=self.workers, **kwargs)
        self._ray_started = True

    def stop(self) -> None:
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False

    def __enter__(self) -> "Executor":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def map_batches(self, fn: Callable, batches: Iterable[list[Record]], *, kwargs: dict,
                    on_result: Callable[[list[Record], list[Record]], None], total: int,
                    desc: str, num_cpus: float = 1.0) -> None:
        """Run ``fn`` over ``batches``; ``on_result(inputs, outputs)`` is called in the driver
        as each batch finishes (in completion order)."""
        bar = tqdm(total=total, desc=desc, unit="rec", mininterval=1.0, dynamic_ncols=True)
        try:
            if self._runs_inline(total):
                for batch in batches:
                    on_result(batch, run_batch(fn, batch, kwargs))
                    bar.update(len(batch))
                return
            import ray

            if not ray.is_initialized():
                self._start_ray()
            remote = ray.remote(num_cpus=num_cpus, max_retries=2)(run_batch)
            max_in_flight = max(2, int(2 * self.workers / max(num_cpus, 0.01)))
            kwargs_ref = ray.put(kwargs)
            in_flight: dict = {}
            for batch in batches:
                while len(in_flight) >= max_in_flight:
                    self._collect(in_flight, on_result, bar)
                ref = remote.remote(fn, batch, kwargs_ref)
                in_flight[ref] = batch
            while in_flight:
                self._collect(in_flight, on_result, bar)
        finally:
            bar.close()

    @staticmethod
    def _collect(in_flight: dict, on_result, bar) -> None:
        import ray

        done, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in done:
            batch = in_flight.pop(ref)
            try:
                out = ray.get(ref)
            except Exception as exc:  # worker died twice (OOM, segfault in a decoder)
                out = [copy.copy(r).fail("worker", FailureCode.INTERNAL,
                              f"worker lost: {type(exc).__name__}: {exc}") for r in batch]
            on_result(batch, out)
            bar.update(len(batch))


def sized_batches(records: list[Record], size_of: Callable[[Record], int], *, max_count: int,
                  target_bytes: int, min_batches: int) -> Iterable[list[Record]]:
    """Batches of about equal input bytes (at most ``max_count`` records): a task of 200 short
    clips then costs about what one of two long tracks does, so per-task overhead stops
    dominating small files. The target shrinks so there are at least ``min_batches`` batches
    (every worker gets work). Input order is kept."""
    sizes = [max(0, size_of(r)) for r in records]
    target = max(1, min(target_bytes, sum(sizes) // max(1, min_batches)))
    batch: list[Record] = []
    acc = 0
    for rec, size in zip(records, sizes):
        if batch and (acc + size > target or len(batch) >= max_count):
            yield batch
            batch, acc = [], 0
        batch.append(rec)
        acc += size
    if batch:
        yield batch


def file_size(path_of: Callable[[Record], str]) -> Callable[[Record], int]:
    def size(rec: Record) -> int:
        try:
            return os.path.getsize(path_of(rec))
        except OSError:
            return 0
    return size
