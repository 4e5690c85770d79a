"""Exit codes of finished runs (docs/cli.md, "Exit codes"): a run that produced nothing never
exits 0; unreachable hosts are exit 3 with one line."""
from __future__ import annotations

import subprocess
import sys

from laion_audio.commands.build import exit_code


def _stage(name, inputs, ok, failed=0, dropped=0, **extra):
    return {"stage": name, "inputs": inputs, "succeeded": ok, "failed": failed, "dropped": dropped,
            "failures": {"undecodable": failed} if failed else {}, **extra}


def test_exit_code_rules():
    fine = {"stages": [_stage("crawl:local", 3, 3), _stage("transcode", 3, 2, 1)],
            "accounting_closes": True}
    assert exit_code(fine) == (0, None)
    nothing = {"stages": [_stage("crawl:local", 3, 3), _stage("transcode", 3, 0, 3)],
               "accounting_closes": True}
    code, line = exit_code(nothing)
    assert code == 1 and "transcode" in line and "3" in line and "undecodable=3" in line
    # a resumed run with nothing left to do is fine: 0 inputs is not "0 of > 0"
    assert exit_code({"stages": [_stage("transcode", 0, 0)], "accounting_closes": True})[0] == 0
    assert exit_code({"stages": [], "accounting_closes": False})[0] == 1
    # the HTTP layer's circuit breaker: top level or per stage, either way exit 3
    for summary in ({"stages": [_stage("fetch:bbc", 50, 0)], "accounting_closes": True,
                     "unreachable_hosts": ["sound-effects-media.bbcrewind.co.uk"]},
                    {"stages": [_stage("fetch:bbc", 50, 0, unreachable_hosts=["a.example"])],
                     "accounting_closes": True}):
        code, line = exit_code(summary)
        assert code == 3 and "unreachable" in line and "pending" in line


def test_build_with_nothing_usable_exits_1(tmp_path):
    """Files that are not audio: every transcode fails, so the run is not a success."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        (src / f"clip{i}.wav").write_bytes(b"not audio at all" * 10)
    done = subprocess.run([sys.executable, "-m", "laion_audio", "build", "--source", "local",
                           "--input", str(src), "--out", str(tmp_path / "w"), "--inline",
                           "--skip-eval-filter"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "finished none of its 3 records" in last and "Traceback" not in done.stderr
