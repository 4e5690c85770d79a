"""The shard writer: LAION layout, readers (webdataset, Hugging Face), determinism, splits."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from laion_audio.records import FailureCode, Status, sample_key
from laion_audio.shards import (INDEX_NAME, SIZES_NAME, assign_split, plan_shards, verify,
                                write_shards)

from .conftest import make_record


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def tars(root: Path) -> list[Path]:
    return sorted(root.glob("*/*/*.tar"), key=lambda p: (p.parent.as_posix(), int(p.stem)))


def decode_flac(key, data):
    if key.endswith("flac"):
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        return audio, sr
    return None


def test_webdataset_reads_every_sample(records, tmp_path):
    out = tmp_path / "out"
    written, report = write_shards(records, out, samples_per_shard=7)
    assert all(r.status == Status.SHARDED for r in written)
    assert report["totals"]["samples"] == len(records) and report["totals"]["failed"] == 0

    urls = [str(p) for p in tars(out)]
    assert len(urls) == report["totals"]["shards"] > 4
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode(decode_flac):
        audio, sr = sample["flac"]
        assert sr == 48000 and audio.shape[1] == 1 and audio.shape[0] > 0
        meta = sample["json"]
        assert isinstance(meta["text"], list) and meta["text"] and all(meta["text"])
        assert set(sample) >= {"__key__", "__url__", "flac", "json"}
        # CLAP derives "<dataset>-<split>" from the two folders above the tar.
        dataset, split = Path(sample["__url__"]).parts[-3:-1]
        assert dataset == meta["source"] and split in ("train", "test")
        seen[sample["__key__"]] = (meta, audio.shape[0] / sr, dataset, split)

    by_key = {sample_key(r.source, r.source_id): r for r in written}
    assert set(seen) == set(by_key)
    for key, (meta, seconds, dataset, split) in seen.items():
        rec = by_key[key]
        assert rec.split == split and rec.shard.startswith(f"{dataset}/{split}/")
        assert meta["source_id"] == rec.source_id and meta["text"] == rec.texts
        assert abs(meta["duration"] - seconds) < 1e-5
        assert abs(seconds - rec.audio_duration) < 1e-3


def test_members_are_flac_then_json_with_fixed_headers(records, tmp_path):
    write_shards(records, tmp_path / "out", samples_per_shard=10)
    for path in tars(tmp_path / "out"):
        with tarfile.open(path) as tar:
            members = tar.getmembers()
        assert path.read_bytes()[257:265] == b"ustar\x0000"     # POSIX USTAR headers, no PAX
        assert len(members) % 2 == 0
        for flac, js in zip(members[::2], members[1::2]):
            assert flac.name.endswith(".flac") and js.name == flac.name[:-5] + ".json"
            assert "." not in flac.name[:-5] and "/" not in flac.name
            for m in (flac, js):
                assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)


def test_sizes_json_and_index_match_the_tars(records, tmp_path):
    out = tmp_path / "out"
    write_shards(records, out, samples_per_shard=9)
    split_dirs = sorted({p.parent for p in tars(out)})
    assert {d.parent.name for d in split_dirs} == {"freedesktop", "colobot"}
    total_seconds = 0.0
    for d in split_dirs:
        sizes = json.loads((d / SIZES_NAME).read_text())
        index = json.loads((d / INDEX_NAME).read_text())
        assert sorted(sizes, key=lambda n: int(n[:-4])) == [f"{i}.tar" for i in range(len(sizes))]
        assert set(sizes) == {p.name for p in d.glob("*.tar")}
        assert [e["name"] for e in index["shards"]] == list(sizes)
        for entry in index["shards"]:
            data = (d / entry["name"]).read_bytes()
            with tarfile.open(d / entry["name"]) as tar:
                n = len([m for m in tar.getmembers() if m.name.endswith(".flac")])
            assert n == sizes[entry["name"]] == entry["samples"]
            assert entry["bytes"] == len(data)
            assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert index["samples"] == sum(sizes.values())
        assert index["dataset"] == d.parent.name and index["split"] == d.name
        total_seconds += index["seconds"]
    assert abs(total_seconds - sum(r.audio_duration for r in records)) < 0.01
    assert verify(out).ok


def test_same_inputs_and_seed_give_identical_bytes_whatever_the_input_order(records, tmp_path):
    """Also from another work folder: FLACs copied elsewhere (other paths, other mtimes) give
    the same tars, index and receipts, as an inline build and a Ray build must."""
    copies = tmp_path / "copies"
    copies.mkdir()
    moved = []
    for i, r in enumerate(records):
        dest = copies / f"{i}.flac"
        shutil.copyfile(r.flac_path, dest)
        moved.append(dataclasses.replace(r, flac_path=str(dest)))
    random.Random(7).shuffle(moved)
    write_shards(records, tmp_path / "a", samples_per_shard=6)
    write_shards(moved, tmp_path / "b", samples_per_shard=6, workers=3)
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert a.keys() == b.keys() and any(k.endswith(".tar") for k in a)
    assert all(a[k] == b[k] for k in a)


def test_a_different_seed_gives_a_different_order(records, tmp_path):
    def order(seed):
        shards, _, _ = plan_shards(records, seed=seed, test_fraction=0.0, samples_per_shard=512)
        return {(s.dataset, s.split): [x.key for x in s.samples] for s in shards}

    a, b = order(1234), order(99)
    assert a.keys() == b.keys()
    for k in a:
        assert sorted(a[k]) == sorted(b[k]) and a[k] != b[k]


def test_split_is_decided_per_id(records, tmp_path):
    ids = [("bbc", str(i)) for i in range(5000)]
    test = sum(assign_split(s, i) == "test" for s, i in ids)
    assert 400 < test < 600                      # ~10 %
    assert sum(assign_split(s, i, test_fraction=0.3) == "test" for s, i in ids) > 1300
    moved = sum(assign_split(s, i, seed=1) != assign_split(s, i) for s, i in ids)
    assert moved > 500                           # the seed matters
    with pytest.raises(ValueError):
        assign_split("bbc", "1", test_fraction=1.5)

    # Adding records (a refresh) never moves an existing id between splits.
    few, _ = write_shards(records[:25], tmp_path / "out", samples_per_shard=5)
    more = records + [make_record("colobot", Path(f"/x/extra{i}.wav"), Path(records[0].flac_path),
                                  records[0].audio_duration, n=i) for i in range(40)]
    all_, report = write_shards(more, tmp_path / "out", samples_per_shard=5)
    before = {r.key: r.split for r in few}
    after = {r.key: r.split for r in all_}
    assert all(after[k] == s for k, s in before.items())
    assert {"train", "test"} <= set(after.values())
    assert verify(tmp_path / "out").ok


def test_byte_target_rolls_shards(records, tmp_path):
    target = 200_000
    _, report = write_shards(records, tmp_path / "out", shard_bytes=target)
    assert report["samples_per_shard"] is None
    for d in {p.parent for p in tars(tmp_path / "out")}:
        index = json.loads((d / INDEX_NAME).read_text())
        for e in index["shards"]:
            assert e["bytes"] <= target or e["samples"] == 1, e
        # Greedy packing: the next sample would not have fitted.
        assert len(index["shards"]) >= index["bytes"] // target
    assert report["totals"]["shards"] > 6
    assert verify(tmp_path / "out").ok


def test_json_keys_and_t5_augmentation(records, tmp_path):
    write_shards(records, tmp_path / "out")
    docs = {}
    for path in tars(tmp_path / "out"):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    raw = tar.extractfile(m).read()
                    doc = json.loads(raw)
                    assert raw == json.dumps(doc, sort_keys=True, ensure_ascii=False,
                                             separators=(",", ":")).encode()
                    docs[doc["source_id"]] = doc
    for rec in records:
        doc = docs[rec.source_id]
        for k in ("text", "tag", "original_data", "source", "source_id", "license", "author",
                  "url", "caption_provenance", "duration"):
            assert k in doc
        assert doc["tag"] == rec.tags and doc["original_data"] == rec.original_data
        if rec.text_augment_t5:
            assert doc["text_augment_t5"] == rec.text_augment_t5
            assert doc["text_augment_all"] == rec.texts + [rec.text_augment_t5]
        else:
            assert "text_augment_t5" not in doc and "text_augment_all" not in doc
    assert any("text_augment_t5" in d for d in docs.values())


def test_bad_records_are_recorded_failures(records, tmp_path):
    good = records[:10]
    stereo = tmp_path / "stereo.flac"
    sf.write(stereo, np.zeros((4800, 2), dtype="float32"), 48000, format="FLAC")
    low_rate = tmp_path / "low.flac"
    sf.write(low_rate, np.zeros(4410, dtype="float32"), 44100, format="FLAC")
    not_audio = tmp_path / "text.flac"
    not_audio.write_text("not a flac")
    nan_meta = dataclasses.replace(records[10], original_data={"score": float("nan")})
    bad = [
        dataclasses.replace(records[11], flac_path=str(tmp_path / "gone.flac")),
        dataclasses.replace(records[12], texts=["", "  "]),
        dataclasses.replace(records[13], flac_path=str(stereo)),
        dataclasses.replace(records[14], flac_path=str(low_rate)),
        dataclasses.replace(records[15], flac_path=str(not_audio)),
        dataclasses.replace(records[16], flac_path=""),
        dataclasses.replace(records[17], source="../escape"),
    ]
    written, report = write_shards(good + [nan_meta] + bad, tmp_path / "out")
    by_id = {r.source_id: r for r in written}
    assert [by_id[r.source_id].failure_code for r in bad] == [
        FailureCode.MISSING_FILE, FailureCode.NO_CAPTION, FailureCode.UNDECODABLE,
        FailureCode.UNDECODABLE, FailureCode.UNDECODABLE, FailureCode.MISSING_FILE,
        FailureCode.BAD_METADATA]
    assert all(by_id[r.source_id].status == Status.FAILED and by_id[r.source_id].failure_stage
               == "shard" and not by_id[r.source_id].shard for r in bad)
    assert report["totals"] == {**report["totals"], "inputs": 18, "samples": 11, "failed": 7}
    assert verify(tmp_path / "out").ok
    # NaN in free-form metadata becomes null instead of invalid JSON.
    assert by_id[nan_meta.source_id].status == Status.SHARDED


def test_rerun_keeps_complete_shards_and_rewrites_changed_ones(records, tmp_path):
    out = tmp_path / "out"
    write_shards(records, out, samples_per_shard=8)
    first = tree_bytes(out)
    _, report = write_shards(records, out, samples_per_shard=8)
    assert report["shards_written"] == 0 and report["shards_kept"] == report["totals"]["shards"]
    assert tree_bytes(out) == first
    # A touched FLAC (same bytes, new mtime) is the same audio: nothing to redo.
    os.utime(records[3].flac_path, (1e9, 1e9))
    _, report = write_shards(records, out, samples_per_shard=8)
    assert report["shards_written"] == 0

    # A new caption on one record rewrites exactly the tar that holds it.
    changed = [dataclasses.replace(r, texts=["a new caption"]) if i == 5 else r
               for i, r in enumerate(records)]
    written, report = write_shards(changed, out, samples_per_shard=8)
    assert report["shards_written"] == 1
    now = tree_bytes(out)
    differ = {k for k in now if k.endswith(".tar") and now[k] != first.get(k)}
    assert differ == {written[5].shard}
    # Fewer records: tars beyond the new plan disappear, sizes.json lists what is there.
    _, report = write_shards(changed[:20], out, samples_per_shard=8)
    assert report["stale_removed"] >= 3
    report = verify(out)
    assert report.ok, report.problems
    assert report.totals["samples"] == 20
    # No test split any more: the old test folders go, LAION-style folders we did not write stay.
    foreign = out / "colobot" / "valid"
    foreign.mkdir()
    (foreign / "sizes.json").write_text("{}")
    _, report = write_shards(changed[:20], out, samples_per_shard=8, test_fraction=0.0)
    assert report["splits_retired"] == 2
    assert not (out / "colobot" / "test").exists() and not (out / "freedesktop" / "test").exists()
    assert (foreign / "sizes.json").exists()


def test_hugging_face_datasets_loads_the_shards(records, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "out"
    write_shards(records, out, samples_per_shard=8)
    files = [str(p) for p in tars(out)]
    # Audio(decode) in datasets 5 needs torchcodec, whose PyPI wheel is a CUDA build; raw FLAC
    # bytes plus free-form JSON is what the webdataset builder then yields.
    features = datasets.Features({"__key__": datasets.Value("string"),
                                  "__url__": datasets.Value("string"),
                                  "flac": datasets.Value("binary"), "json": datasets.Json()})
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                               features=features, cache_dir=str(tmp_path / "hf"))
    assert len(ds) == len(records)
    keys = set()
    for row in ds:
        audio, sr = sf.read(io.BytesIO(row["flac"]))
        assert sr == 48000 and audio.ndim == 1
        assert row["json"]["text"] and row["json"]["source"] in ("colobot", "freedesktop")
        keys.add(row["__key__"])
    assert keys == {sample_key(r.source, r.source_id) for r in records}
