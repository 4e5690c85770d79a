"""Peak memory of a piece of code run in a fresh interpreter, for the bounded-memory tests.

The child's own peak RSS is its VmHWM: ``ru_maxrss`` would also count the pytest process it
was forked from, which Linux carries over into the child's maxrss at exec."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEAK = ("def peak_kb():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1])\n")


def in_child(code: str, path: Path) -> list[int]:
    """Run ``code`` with ``sys.argv[1] = path`` (it prints integers, the last ``peak_kb()``):
    its VmHWM counts only what it allocated itself."""
    out = subprocess.run([sys.executable, "-c", PEAK + "import sys;" + code, str(path)],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    return [int(v) for v in out]
