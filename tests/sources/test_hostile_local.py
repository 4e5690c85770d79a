"""Hostile input to the ``local`` source (issue 10 items 8 and 14, issue 11 item 6): file names
that are not UTF-8, captions with controls/escapes/bidi characters or a megabyte of text, and
paths of the user's machine that must never reach a record or a shard."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import pytest

from crawlers.base import clean_text, plain_text
from crawlers.local import LocalSource
from laion_audio.ledger import Ledger
from laion_audio.records import Status
from pipelines.build import BuildConfig, run_build

from .packfixtures import clip, write_audio  # noqa: F401 (fixture)

HOSTILE = "\x00a dog\u202e barks \x1b[31mloudly\x1b[0m \u2066isolate\u2069 \u061cnear\u2067 \u2068x"


@pytest.mark.parametrize("char", ["\u2066", "\u2067", "\u2068", "\u2069", "\u061c", "\u202e",
                                  "\x00", "\x1b", "\u200f"])
def test_clean_text_drops_bidi_isolates_and_controls(char):
    assert char not in clean_text(f"a{char}b") and char not in plain_text(f"a{char}b")
    assert clean_text(f"a{char}b").replace(" ", "") == "ab"


def test_plain_text_removes_escape_sequences_and_is_idempotent():
    out = plain_text(HOSTILE)
    assert out == "a dog barks loudly isolate near x"
    assert plain_text(out) == out and clean_text(out) == out


def _latin1(root, name: bytes):
    return os.path.join(os.fsencode(root), name)


def test_local_non_utf8_names_hostile_captions_and_relative_urls(tmp_path, clip):
    root = tmp_path / "sounds"
    write_audio(root / "sub" / "ok.wav", clip)
    write_audio(root / "café.wav", clip)                       # a real UTF-8 name
    shutil.copy(root / "café.wav", _latin1(root, b"caf\xe9.wav"))   # its Latin-1 twin
    shutil.copy(root / "café.wav", _latin1(root, b"na\xefve.wav"))
    (root / "sub" / "ok.txt").write_text(HOSTILE + "\n" + "z" * (1 << 20) + "\n", encoding="utf-8")
    records = list(LocalSource(input=root).crawl({}))
    by_id = {r.source_id: r for r in records}
    assert len(by_id) == 4 and all(r.status == Status.NEW for r in records)
    assert "naïve.wav" in by_id and "café.wav" in by_id
    twin = [k for k in by_id if k.startswith("café~")]
    assert len(twin) == 1 and twin[0].endswith(".wav")
    for rec in records:
        rec.source_id.encode("utf-8")
        json.dumps(rec.to_json() if hasattr(rec, "to_json") else rec.__dict__, ensure_ascii=False
                   ).encode("utf-8")
        assert not os.path.isabs(rec.url) and str(tmp_path) not in json.dumps(rec.__dict__)
    ok = by_id["sub/ok.wav"]
    assert ok.texts[0] == "a dog barks loudly isolate near x"
    assert len(ok.texts[1]) <= 2000 and ok.texts[1].startswith("zzz")
    # fetch finds every file, the Latin-1 ones by their exact bytes
    for rec in records:
        path = LocalSource(input=root).fetch(rec, tmp_path / "raw")
        assert os.path.isfile(path)
    got = LocalSource(input=root).fetch(by_id["naïve.wav"], tmp_path)
    str(got).encode("utf-8")                        # a path the ledger can store
    assert os.path.samefile(got, _latin1(root, b"na\xefve.wav"))


def test_moving_the_input_folder_changes_no_record(tmp_path, clip):
    first = tmp_path / "a" / "sounds"
    write_audio(first / "x" / "bark.wav", clip)
    write_audio(first / "meow.flac", clip)
    before = [r.__dict__ for r in LocalSource(input=first).crawl({})]
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(first, moved)
    after_records = list(LocalSource(input=moved).crawl({}))
    assert [r.__dict__ for r in after_records] == before
    with Ledger(tmp_path / "ledger") as led:
        led.upsert(before_records := list(LocalSource(input=moved).crawl({})))
        again = led.upsert(list(LocalSource(input=moved).crawl({})))
    assert again.summary()["changed"] == 0 and len(before_records) == 2


@pytest.mark.slow
def test_build_with_hostile_local_folder_publishes_no_path_and_clean_text(tmp_path, clip):
    root = tmp_path / "in"
    write_audio(root / "dogs" / "bark.wav", clip)
    shutil.copy(root / "dogs" / "bark.wav", _latin1(root, b"caf\xe9.wav"))
    write_audio(root / "cats" / "meow.flac", (clip[0][::-1].copy(), clip[1]))
    (root / "cats" / "meow.txt").write_text(HOSTILE + " " + "y" * (1 << 20), encoding="utf-8")
    out = tmp_path / "out"
    summary = run_build(BuildConfig(out=out, sources={"local": {"input": str(root)}}, inline=True,
                                    samples_per_shard=8, batch_size=4, workers=1,
                                    ))
    assert summary["accounting_closes"]
    texts = []
    for tar in (out / "shards").rglob("*.tar"):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    raw = tf.extractfile(m).read()
                    raw.decode("utf-8")
                    assert str(tmp_path).encode() not in raw and b"\x1b" not in raw
                    data = json.loads(raw)
                    assert not os.path.isabs(data.get("url", ""))
                    texts.extend(data["text"])
    assert len(texts) >= 2          # bark.wav and its Latin-1 copy are one sound: one is a duplicate
    assert all(len(t) <= 2000 and "\u202e" not in t and "\x00" not in t for t in texts)
    assert "café" in texts


def test_pack_folder_with_a_non_utf8_name_is_a_typed_failure_not_a_crash(tmp_path, clip):
    from crawlers import get_source

    pack = tmp_path / "pack"
    write_audio(pack / "ok.wav", clip)
    shutil.copy(pack / "ok.wav", _latin1(pack, b"caf\xe9.wav"))
    source = get_source("sonniss_game_effects")(inputs=[str(pack)], cache_dir=tmp_path / "cache")
    records = list(source.crawl({}))
    with Ledger(tmp_path / "ledger") as led:       # every text field is valid UTF-8 now
        led.upsert(records)
    fetched = {r.source_id: r for r in source.fetch_many(records, tmp_path / "raw", workers=1)}
    assert fetched["pack/ok.wav"].status == Status.FETCHED
    assert fetched["pack/café.wav"].failure_code == "missing_file"
