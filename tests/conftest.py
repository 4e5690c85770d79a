"""Fixtures every test area shares: where ../shared/data is, and real Debian sound files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LAION_AUDIO_SHARED", REPO.parent / "shared"))
DEBIAN_SOUND_DIRS = [Path("/usr/share/sounds"), Path("/usr/share/games/colobot/sounds"),
                     Path("/usr/share/games/colobot")]
AUDIO_EXTS = {".wav", ".ogg", ".oga", ".flac", ".mp3"}


@pytest.fixture(scope="session", autouse=True)
def _own_evalsets_cache(tmp_path_factory):
    """Tests never read or fill the user's eval-set cache (a build fetches eval sets into it
    when it is empty); CLI subprocesses inherit this."""
    if "LAION_AUDIO_EVALSETS_CACHE" not in os.environ:
        os.environ["LAION_AUDIO_EVALSETS_CACHE"] = str(tmp_path_factory.mktemp("evalsets-cache"))
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (CI has it beside the checkout; a user's machine may not)."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return path


def find_debian_sounds() -> list[Path]:
    files = set()
    for d in DEBIAN_SOUND_DIRS:
        if d.is_dir():
            files.update(p for p in d.rglob("*") if p.suffix.lower() in AUDIO_EXTS and p.is_file())
    return sorted(files)


@pytest.fixture(scope="session")
def debian_sounds() -> list[Path]:
    """Real sound files from Debian packages (installed by .ci/install)."""
    files = find_debian_sounds()
    if len(files) < 10:
        pytest.skip("Debian sound packages are not installed (run bash .ci/install --test)")
    return files
