"""Shards on object storage: a real S3 API (moto in server mode) on 127.0.0.1."""
from __future__ import annotations

import json
import os
import socket
import urllib.request

import pytest

from laion_audio.shards import verify, write_shards

from .test_verify import cli
from .test_writer import tree_bytes

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def s3(monkeypatch):
    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # moto keeps its buckets in this process across servers: each test starts from none
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing")
    fs.mkdir("corpus")
    try:
        yield endpoint, fs
    finally:
        server.stop()


def test_shards_on_s3_match_local_ones_and_verify_reads_them_back(records, tmp_path, s3):
    endpoint, fs = s3
    options = {"endpoint_url": endpoint}
    written, report = write_shards(records, "s3://corpus/webdataset_tar", samples_per_shard=8,
                                   storage_options=options, workers=2)
    assert report["totals"]["samples"] == len(records)
    write_shards(records, tmp_path / "local", samples_per_shard=8)
    local = tree_bytes(tmp_path / "local")

    remote = {p[len("corpus/webdataset_tar/"):] for p in fs.find("corpus/webdataset_tar")}
    assert remote == set(local)
    for rel, data in local.items():
        assert fs.cat_file(f"corpus/webdataset_tar/{rel}") == data, rel
    assert not [p for p in remote if ".tmp-" in p]

    result = verify("s3://corpus/webdataset_tar", storage_options=options)
    assert result.ok, result.problems
    assert result.totals["samples"] == len(records)

    # A rerun finds the uploaded tars complete and uploads nothing.
    _, again = write_shards(records, "s3://corpus/webdataset_tar", samples_per_shard=8,
                            storage_options=options)
    assert again["shards_written"] == 0

    # The CLI reaches the same bucket through --storage-option; damage is reported there too.
    sizes_key = "corpus/webdataset_tar/colobot/train/sizes.json"
    sizes = json.loads(fs.cat_file(sizes_key))
    sizes["0.tar"] += 1
    fs.pipe_file(sizes_key, json.dumps(sizes).encode())
    done = cli("verify", "s3://corpus/webdataset_tar", "--storage-option",
               f"endpoint_url={endpoint}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "s3://corpus/webdataset_tar/colobot/train/0.tar: holds" in done.stdout
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"


def test_local_build_published_to_s3_after_the_keep_policy_released_its_flacs(tmp_path, s3):
    """The everyday publish step: build locally (FLACs released into work/shards), then
    ``shard --shards-to s3://...``. The released clips are copied back from the local tars
    (each checked) and every sharded record lands in the bucket; nothing is requeued."""
    import numpy as np
    import soundfile as sf

    from laion_audio.ledger import Ledger
    from laion_audio.records import Status
    from pipelines.build import BuildConfig, run_build

    endpoint, fs = s3
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(7)
    for i in range(6):
        t = np.arange(int(22050 * rng.uniform(0.6, 1.2))) / 22050
        x = np.sin(2 * np.pi * rng.uniform(200, 3000) * t) * (np.sin(2 * np.pi * (2 + i) * t) > 0)
        sf.write(src / f"clip{i}.wav", (0.3 * x).astype(np.float32), 22050)
    work = tmp_path / "work"
    run_build(BuildConfig(out=work, sources={"local": {"input": str(src)}}, samples_per_shard=4,
                          batch_size=2, workers=1, inline=True, skip_eval_filter=True))
    assert not list((work / "audio").rglob("*.flac"))            # all released
    done = cli("shard", "--out", str(work), "--shards-to", "s3://corpus/published",
               "--storage-option", f"endpoint_url={endpoint}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "copied back" in done.stdout
    sharded = Ledger(work / "ledger").records(status=[Status.SHARDED])
    assert len(sharded) == 6
    result = verify("s3://corpus/published", storage_options={"endpoint_url": endpoint})
    assert result.ok and result.totals["samples"] == 6, result.problems
