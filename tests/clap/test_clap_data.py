"""The shard loader reads LAION's exact layout (incl. the real laion_pairs JSON shapes), skips
corrupt samples with a count, splits by node/worker and is deterministic for exact resume."""
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from laion_audio.clap.data import ClapShards, captions_of, find_shards, make_loader, select_text
from laion_audio.clap.features import AudioConfig
from laion_audio.clap.text import train_tokenizer
from tests.clap.synth import flac_bytes, synth_clip, write_shards

CFG = AudioConfig()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(["the sound of a bell", "a dog barks", "bubble water"] * 5,
                           tmp_path_factory.mktemp("tok"), "roberta", 300)


def _clip(i, seconds=0.5):
    return synth_clip("rising chirp", i % 2, 1, np.random.default_rng(i), seconds=seconds)


def _all(ds, epoch=0, skip=0, workers=0):
    ds.set_epoch(epoch, skip)
    return list(make_loader(ds, workers))


def _write_laion_tar(path: Path, pairs):
    """LAION's make_tar_utils: members added by full path, flac then its json."""
    with tarfile.open(path, "w") as tar:
        for name, audio, meta in pairs:
            for ext, data in (("flac", audio), ("json", meta)):
                info = tarfile.TarInfo(f"mnt/audio_clip/processed/{name}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_reads_laion_layout_with_real_laion_pairs(shared_data, tmp_path, tok):
    pairs_dir = shared_data / "laion_pairs"
    jsons = sorted(pairs_dir.glob("*.json"))
    assert len(jsons) >= 10
    pairs = []
    for i, js in enumerate(jsons):
        flac = js.with_suffix(".flac")
        audio = flac.read_bytes() if flac.exists() else flac_bytes(_clip(i))
        pairs.append((str(i + 1), audio, js.read_bytes()))
    split = tmp_path / "laion" / "WavText5K" / "train"
    split.mkdir(parents=True)
    _write_laion_tar(split / "0.tar", pairs[:7])
    _write_laion_tar(split / "1.tar", pairs[7:])
    (split / "sizes.json").write_text(json.dumps({"0.tar": 7, "1.tar": len(pairs) - 7}))
    sets = find_shards(tmp_path / "laion", ["WavText5K"], ["train", "test"])
    assert [s.name for s in sets] == ["WavText5K-train"] and sets[0].num_samples == len(pairs)
    ds = ClapShards(sets, tok, CFG, batch_size=4, train=False)
    batches = _all(ds)
    assert sum(len(b["raw_text"]) for b in batches) == len(pairs)
    assert sum(b["skipped"] for b in batches) == 0
    metas = [json.loads(p[2]) for p in pairs]
    full = [t for b in batches for t in b["full_text"]]
    raw = [t for b in batches for t in b["raw_text"]]
    for meta, caps, chosen in zip(metas, full, raw):
        expected = meta["text"] if isinstance(meta["text"], list) else [meta["text"]]
        assert caps == expected and chosen in caps  # plain-string `text` (WavText5K) works
    assert any("tag" not in m for m in metas)  # LibriSpeech has no tag: read anyway
    b = batches[0]
    assert b["waveform"].shape == (4, 480000) and b["longer"].shape == (4, 1)
    assert b["text"]["input_ids"].shape == (4, 77)
    assert b["dataset"][0] == "WavText5K-train"
    assert b["__key__"][0].endswith("processed/1")
    assert 48000 in [sr for bb in batches for sr in bb["audio_orig_sr"]]


def test_text_augment_selection():
    meta = {"text": ["a", "b"], "text_augment_all": ["a", "b", "t5 caption"], "text_augment_t5": "t5 caption"}
    assert select_text(meta, "none") == ["a", "b"]
    assert select_text(meta, "all") == ["a", "b", "t5 caption"]
    assert select_text(meta, "augment_only") == "t5 caption"
    assert select_text({**meta, "text_augment_t5": None}, "augment_only") == ["a", "b"]
    assert select_text({"text": "x", "text_augment_t5": "y"}, "augment_only") == "x"  # no _all key
    assert select_text({"text": "x"}, "all") == "x"
    assert captions_of({"text": "plain"}, None) == ["plain"]
    for bad in ({"text": []}, {"text": 5}, {"caption": "x"}):
        with pytest.raises((ValueError, KeyError)):
            captions_of(bad, None)


def test_corrupt_samples_are_skipped_and_counted(tmp_path, tok):
    good = [(f"ok-{i}", _clip(i), {"text": [f"clip {i}"]}) for i in range(5)]
    bad = [("badaudio", b"not a flac at all", {"text": "x"}),
           ("badjson", _clip(9), b"{not json"),
           ("notext", _clip(10), {"tag": ["x"]})]
    write_shards(tmp_path, "ds", "train", good[:3] + bad + good[3:], per_shard=4)
    split = tmp_path / "ds" / "train"
    # a sample with a flac but no json, and a truncated tar
    with tarfile.open(split / "2.tar", "w") as tar:
        data = flac_bytes(_clip(11))
        info = tarfile.TarInfo("lonely.flac")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    whole = (split / "1.tar").read_bytes()
    (split / "3.tar").write_bytes(whole[: len(whole) // 2 + 100])
    sizes = json.loads((split / "sizes.json").read_text())
    sizes.update({"2.tar": 1, "3.tar": 4})
    (split / "sizes.json").write_text(json.dumps(sizes))
    (split / "99.tar").write_bytes(b"garbage not listed in sizes.json: never read")
    ds = ClapShards(find_shards(tmp_path), tok, CFG, batch_size=2, train=False)
    batches = _all(ds)
    keys = [k for b in batches for k in b["__key__"]]
    assert all(k.startswith("ok-") for k in keys)
    assert set(keys[:5]) == {f"ok-{i}" for i in range(5)}
    assert sum(b["skipped"] for b in batches) >= 4  # bad audio, bad json, no text, flac without json (+ tar)


def test_missing_sizes_json_skips_split(tmp_path):
    write_shards(tmp_path, "a", "train", [("k", _clip(0), {"text": "t"})])
    (tmp_path / "b" / "train").mkdir(parents=True)
    (tmp_path / "b" / "train" / "0.tar").write_bytes(b"")
    assert [s.name for s in find_shards(tmp_path)] == ["a-train"]
    assert find_shards(tmp_path, ["a"], ["test"]) == []


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    write_shards(root, "ds", "train", [(f"s{i:02d}", _clip(i, 0.2), {"text": [f"clip {i}", f"take {i}"]})
                                       for i in range(20)], per_shard=5)
    return root


def test_train_epochs_split_and_resume_skip(train_shards, tok):
    sets = find_shards(train_shards)

    def make(rank=0, world=1, seed=1):
        return ClapShards(sets, tok, CFG, batch_size=3, train=True, seed=seed, rank=rank, world_size=world,
                          shuffle_buffer=8, shuffle_initial=4)

    ds = make()
    assert ds.num_batches == 7  # ceil(20 / 3)
    epoch0 = _all(ds, 0)
    assert len(epoch0) == 7 and all(len(b["raw_text"]) == 3 for b in epoch0)
    keys0 = [k for b in epoch0 for k in b["__key__"]]
    assert len(set(keys0)) >= 15 and set(keys0) <= {f"s{i:02d}" for i in range(20)}  # passes overlap in the buffer
    again = _all(make(), 0)
    assert [b["__key__"] for b in again] == [b["__key__"] for b in epoch0]
    assert [b["raw_text"] for b in again] == [b["raw_text"] for b in epoch0]
    assert torch.equal(again[2]["waveform"], epoch0[2]["waveform"])
    assert [b["__key__"] for b in _all(make(), 1)] != [b["__key__"] for b in epoch0]
    # resume: skipping 4 batches yields exactly the remaining ones, same captions and audio
    tail = _all(make(), 0, skip=4)
    assert [b["__key__"] for b in tail] == [b["__key__"] for b in epoch0[4:]]
    assert [b["raw_text"] for b in tail] == [b["raw_text"] for b in epoch0[4:]]
    # two nodes: disjoint shard subsets, each with ceil(20 / 6) = 4 batches
    r0, r1 = _all(make(0, 2), 0), _all(make(1, 2), 0)
    assert len(r0) == len(r1) == 4
    k0 = {k for b in r0 for k in b["__key__"]}
    k1 = {k for b in r1 for k in b["__key__"]}
    assert not k0 & k1 and len(k0 | k1) >= 16  # each node reads only its own shards


@pytest.mark.slow
def test_workers_round_robin_and_resume(train_shards, tok):
    sets = find_shards(train_shards)
    ds = ClapShards(sets, tok, CFG, batch_size=3, train=True, seed=2, workers=2, shuffle_buffer=8, shuffle_initial=4)
    assert ds.num_batches == 8  # rounded up to a multiple of the 2 workers
    full = _all(ds, 0, workers=2)
    assert len(full) == 8
    tail = _all(ds, 0, skip=3, workers=2)
    assert [b["__key__"] for b in tail] == [b["__key__"] for b in full[3:]]


def test_weighted_datasets(tmp_path, tok):
    write_shards(tmp_path, "big", "train", [(f"b{i}", _clip(i, 0.2), {"text": "b"}) for i in range(8)], per_shard=4)
    write_shards(tmp_path, "small", "train", [(f"s{i}", _clip(i, 0.2), {"text": "s"}) for i in range(2)])
    sets = find_shards(tmp_path, weights={"small": 3.0})
    assert {s.name: s.weight for s in sets} == {"big-train": 1.0, "small-train": 3.0}
    ds = ClapShards(sets, tok, CFG, batch_size=5, train=True, seed=0, weighted=True,
                    shuffle_buffer=4, shuffle_initial=2)
    texts = [t for b in _all(ds) for t in b["raw_text"]]
    assert len(texts) == 10 and texts.count("s") > texts.count("b")  # 2 of 10 samples, drawn 3:1
