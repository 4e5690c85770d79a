"""Hostile-corpus acceptance run (issue 10): every hostile case in one input folder and one set
of pack archives, built with ``build --source local`` and a pack source, in-process (``--inline``:
the one process is the worker whose memory we measure).

    python benchmarks/hostile_corpus.py [--work DIR] [--long-minutes 60] [--bomb-mib 1024]

Prints, per build: exit status, peak RSS (VmHWM of the build process), the ledger's
status/failure counts; then whether anything was written outside the work folder (HOME and
TMPDIR point at empty sandbox folders; the input folder is hashed before and after) and the
expected failure code of each planted case. Exits 1 when an expectation does not hold.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HOSTILE_TEXT = ("\x00a dog\u202e barks \x1b[31mloudly\x1b[0m \u2066isolate\u2069 \u061cnear "
                + "y" * (1 << 20))


def tone(seconds: float, rate: int = 48000, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(len(t)) * 0.05
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def wav_bytes(rate: int, samples: np.ndarray) -> bytes:
    raw = samples.astype("<i2").tobytes()
    return (b"RIFF" + struct.pack("<I", 36 + len(raw)) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", len(raw)) + raw)


def damage(data: bytes, nbytes: int, at: float = 0.5) -> bytes:
    b = bytearray(data)
    i = int(len(b) * at)
    b[i:i + nbytes] = bytes(random.Random(1).randrange(256) for _ in range(nbytes))
    return bytes(b)


def flac_bytes(x: np.ndarray, rate: int = 48000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def make_local(root: Path, long_minutes: float) -> dict[str, str]:
    """The local folder; returns {file id: expected outcome (status or failure code)}."""
    root.mkdir(parents=True)
    expect = {}
    for i, ext in enumerate(("wav", "flac", "ogg")):
        sf.write(str(root / f"normal_{i}.{ext}"), tone(1.5, freq=300 + 170 * i, seed=i), 48000)
        expect[f"normal_{i}.{ext}"] = "ok"
    sf.write(os.path.join(os.fsencode(root), b"caf\xe9.wav"), tone(1.0, freq=900, seed=9), 48000)
    expect["café.wav"] = "ok"
    sf.write(str(root / "hostile.wav"), tone(1.0, freq=1200, seed=12), 48000)
    (root / "hostile.txt").write_text(HOSTILE_TEXT, encoding="utf-8")
    expect["hostile.wav"] = "ok"
    (root / "bomb_1hz.wav").write_bytes(wav_bytes(1, (np.arange(3500) % 2000).astype(np.int16)))
    expect["bomb_1hz.wav"] = "implausible_header"
    one = flac_bytes(np.random.default_rng(1).uniform(-.5, .5, 48000))
    ten = flac_bytes(np.random.default_rng(2).uniform(-.5, .5, 480000))
    (root / "corrupt_1s.flac").write_bytes(damage(one, 200))
    (root / "corrupt_10s.flac").write_bytes(damage(ten, 3000))
    md5 = bytearray(flac_bytes(tone(1.0, freq=555, seed=5)))
    md5[26:42] = bytes(range(1, 17))
    (root / "md5_mismatch.flac").write_bytes(bytes(md5))
    claims = bytearray(flac_bytes(tone(0.5, freq=666, seed=6)))
    packed = int.from_bytes(claims[18:26], "big")
    claims[18:26] = ((packed & ~((1 << 36) - 1)) | (1 << 34)).to_bytes(8, "big")
    (root / "claims_99h.flac").write_bytes(bytes(claims))
    expect.update({"corrupt_1s.flac": "corrupt_audio", "corrupt_10s.flac": "corrupt_audio",
                   "md5_mismatch.flac": "corrupt_audio", "claims_99h.flac": "implausible_header"})
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        src = root.parent / "pipe_src.wav"
        sf.write(str(src), tone(2.0, freq=777, seed=7), 48000, subtype="PCM_16")
        piped = subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-i", str(src), "-f",
                                "flac", "pipe:1"], check=True, capture_output=True).stdout
        (root / "pipe.flac").write_bytes(piped)
        (root / "pipe_corrupt.flac").write_bytes(damage(piped, 300))
        subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        "anullsrc=r=48000:cl=mono", "-t", "0", "-c:a", "flac",
                        str(root / "empty.flac")], check=True)
        expect.update({"pipe.flac": "ok", "pipe_corrupt.flac": "corrupt_audio",
                       "empty.flac": "too_short"})
    if long_minutes > 0:   # becomes long_minutes of 48 kHz: transcode + fingerprint memory
        rng = np.random.default_rng(0)
        with sf.SoundFile(str(root / "long_8k.wav"), "w", 8000, 1, "PCM_16") as fh:
            for m in range(int(long_minutes)):
                t = np.arange(8000 * 60) / 8000
                fh.write((0.2 * np.sin(2 * np.pi * (200 + 5 * m) * t)
                          + 0.02 * rng.standard_normal(len(t))).astype(np.float32))
        expect["long_8k.wav"] = "ok"
    return expect


def make_packs(root: Path, bomb_mib: int) -> dict[str, str]:
    root.mkdir(parents=True)
    good = [flac_bytes(tone(1.0, freq=250 + 90 * i, seed=20 + i)) for i in range(4)]
    expect = {}
    with zipfile.ZipFile(root / "tree.zip", "w") as zf:
        zf.writestr("Pack/a.wav", wav_bytes(48000, (tone(1.0, freq=330, seed=30) * 20000).astype(np.int16)))
        zf.writestr("Pack/a.wav/b.wav", good[0])
        zf.writestr("Pack/ok.flac", good[1])
    expect.update({"tree/Pack/a.wav": "ok", "tree/Pack/a.wav/b.wav": "unsafe_path",
                   "tree/Pack/ok.flac": "ok"})
    with tarfile.open(root / "latin1.tar", "w", encoding="latin-1", format=tarfile.GNU_FORMAT) as tf:
        for name, data in [("Pack/café.flac", good[2]), ("Pack/x.flac", good[3]),
                           ("Pack/x.flac/y.flac", good[3])]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    expect.update({"latin1/Pack/café.flac": "ok", "latin1/Pack/x.flac": "ok",
                   "latin1/Pack/x.flac/y.flac": "unsafe_path"})
    with tarfile.open(root / "bomb.tar.gz", "w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("Pack/bomb.wav")
        info.size = bomb_mib << 20

        class Zeros(io.RawIOBase):
            def __init__(self, n):
                self.left = n

            def readable(self):
                return True

            def readinto(self, b):
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n
        tf.addfile(info, io.BufferedReader(Zeros(info.size), 1 << 20))
    expect["bomb/Pack/bomb.wav"] = "too_large"
    with zipfile.ZipFile(root / "junk.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(1024):
            zf.writestr(f"Pack/junk{i:04d}.wav", bytes((1 << 20) - 1))
    expect["junk/*"] = "too_large"
    return expect


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(os.fsencode(p.relative_to(root)))
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def run(args: list[str], env: dict) -> tuple[int, float, float, str]:
    """(exit status, peak RSS MB of the child, seconds, output tail)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log, tempfile.NamedTemporaryFile("r") as peak:
        proc = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, peak.name, *args], cwd=REPO,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
        log.seek(0)
        tail = log.read().decode("utf-8", "replace")[-1500:]
        kb = int(peak.read().strip() or 0)
    return proc.returncode, kb / 1024, time.perf_counter() - start, tail


#: runs ``laion-audio ARGS`` and writes its own peak RSS (VmHWM) to a file at exit: ru_maxrss
#: of a child would also count this (parent) process, which Linux carries over at exec
_PEAK_WRAPPER = """
import atexit, runpy, sys
out = sys.argv[1]
def peak():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            open(out, 'w').write(line.split()[1])
atexit.register(peak)
sys.argv = ['laion-audio'] + sys.argv[2:]
runpy.run_module('laion_audio', run_name='__main__')
"""


def ledger_outcomes(work: Path) -> dict[str, str]:
    from laion_audio.ledger import Ledger

    with Ledger(work / "ledger", lock=False) as led:
        return {r.source_id: (r.failure_code or ("ok" if r.status in ("sharded", "dropped")
                                                 else r.status)) for r in led.records()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None, help="folder for everything (default: a temp dir)")
    ap.add_argument("--long-minutes", type=float, default=60.0)
    ap.add_argument("--bomb-mib", type=int, default=1024)
    args = ap.parse_args()
    base = Path(args.work or tempfile.mkdtemp(prefix="hostile-"))
    sandbox_home, sandbox_tmp = base / "sandbox_home", base / "sandbox_tmp"
    for d in (sandbox_home, sandbox_tmp):
        d.mkdir(parents=True, exist_ok=True)
    expect_local = make_local(base / "in", args.long_minutes)
    expect_packs = make_packs(base / "packs", args.bomb_mib)
    digest_in, digest_packs = tree_digest(base / "in"), tree_digest(base / "packs")
    env = dict(os.environ, HOME=str(sandbox_home), TMPDIR=str(sandbox_tmp),
               PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(sandbox_home / ".cache"))
    ok = True
    builds = {
        "local": (["build", "--source", "local", "--input", str(base / "in"), "--out",
                   str(base / "work_local"), "--inline", "--workers", "1",
                   "--skip-eval-filter"], expect_local),   # offline: no eval sets to fetch
        "packs": (["build", "--source", "sonniss_game_effects", "--out", str(base / "work_packs"),
                   "--inline", "--workers", "1", "--skip-eval-filter",
                   "--pack-cache-dir", str(base / "work_packs" / "packs")]
                  + [a for p in ("tree.zip", "latin1.tar", "bomb.tar.gz", "junk.zip")
                     for a in ("--sonniss-game-effects-input", str(base / "packs" / p))],
                  expect_packs),
    }
    for name, (cli, expect) in builds.items():
        rc, rss, secs, tail = run(cli, env)
        work = Path(cli[cli.index("--out") + 1])
        print(f"== {name}: exit {rc}, peak RSS {rss:.0f} MB, {secs:.0f} s")
        if rc not in (0, 1):
            ok = False
            print(tail)
            continue
        got = ledger_outcomes(work)
        for key, want in expect.items():
            if key.endswith("/*"):
                prefix = key[:-1]
                codes = {v for k, v in got.items() if k.startswith(prefix)}
                n = sum(1 for k in got if k.startswith(prefix))
                good = codes == {want}
                print(f"  {'ok ' if good else 'BAD'} {key}: {n} records, {sorted(codes)}")
            else:
                good = got.get(key) == want
                print(f"  {'ok ' if good else 'BAD'} {key}: {got.get(key)} (want {want})")
            ok &= good
        shard_json = b"".join(tf.extractfile(m).read() for t in (work / "shards").rglob("*.tar")
                              for tf in [tarfile.open(t)] for m in tf.getmembers()
                              if m.name.endswith(".json"))
        leaks = [s for s in (str(base).encode(), b"\x1b", "\u202e".encode(), b"\\u0000")
                 if s in shard_json]
        print(f"  shard JSON: {len(shard_json)} bytes, leaks/controls found: {leaks or 'none'}")
        ok &= not leaks
        ok &= rss <= 1024
    rc, rss, secs, tail = run(["report", "--out", str(base / "work_local")], env)
    print(f"== report: exit {rc}, peak RSS {rss:.0f} MB")
    ok &= rc == 0
    outside = [str(p.relative_to(base)) for d in (sandbox_home, sandbox_tmp) for p in d.rglob("*")
               if p.is_file()]
    unchanged = digest_in == tree_digest(base / "in") and digest_packs == tree_digest(base / "packs")
    print(f"== written outside the work folders: {outside[:10] or 'nothing'} "
          f"({len(outside)} files in HOME/TMPDIR); inputs unchanged: {unchanged}")
    ok &= unchanged and not outside
    print("ALL EXPECTATIONS HOLD" if ok else "SOME EXPECTATIONS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
