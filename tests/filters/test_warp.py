"""Issue 14: the warp perturbations do what they say, and the warp path's pieces are exact
where they can be (hash expansion covers a warped copy's bins, band warping inverts)."""
from __future__ import annotations

import numpy as np
import pytest

from laion_audio.filters import fingerprint as F
import robustness as R  # benchmarks/ (tests/filters/conftest.py)

SR = R.WORK_SR


def _tone(hz: float, seconds: float = 3.0) -> np.ndarray:
    """A harmonic tone (7 partials) with a slow vibrato-free envelope."""
    t = np.arange(int(seconds * SR)) / SR
    return (0.2 * sum(np.sin(2 * np.pi * hz * h * t) / h for h in range(1, 8))).astype(np.float32)


def _log_spectrum(x: np.ndarray) -> np.ndarray:
    seg = x[len(x) // 2 - SR // 2: len(x) // 2 + SR // 2]     # the steady middle second
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
    cents = np.arange(1200 * np.log2(150), 1200 * np.log2(3000))    # 1-cent grid
    return np.interp(2 ** (cents / 1200), np.fft.rfftfreq(len(seg), 1 / SR), spec)


def _pitch_ratio(x: np.ndarray, y: np.ndarray) -> float:
    """Frequency ratio of y to x: the shift (in cents) that best aligns their log spectra."""
    a, b = _log_spectrum(x), _log_spectrum(y)
    shifts = np.arange(-200, 201)
    score = [np.dot(a[200:-200], b[200 + s:len(b) - 200 + s]) for s in shifts]
    return 2 ** (shifts[int(np.argmax(score))] / 1200)


@pytest.mark.parametrize("name, length, pitch", [
    ("speed_+6%", 1 / 1.06, 1.06), ("speed_-3%", 1 / 0.97, 0.97),
    ("pitch_+100c", 1.0, 2 ** (1 / 12)), ("pitch_-50c", 1.0, 2 ** (-0.5 / 12)),
    ("tempo_+5%", 1 / 1.05, 1.0), ("tempo_-5%", 1 / 0.95, 1.0)])
def test_warp_perturbations_move_time_and_pitch_as_named(name, length, pitch):
    x = _tone(220.0)
    y = R.WARPS[name][0](x, SR, np.random.default_rng(0))
    assert len(y) / len(x) == pytest.approx(length, rel=0.01)
    assert _pitch_ratio(x, y) == pytest.approx(pitch, abs=0.004)       # +-7 cents


def test_query_hashes_cover_a_speed_changed_copy():
    """Most index-side triplet hashes of the original are among the query-side hashes of a
    copy played 6 % faster (the landmark hashes of the exact path share almost none)."""
    rng = np.random.default_rng(1)
    x = R.texture("tones", 4.0, rng) + R.texture("chirps", 4.0, rng)
    y = R.speed(1.06)(x, SR, rng)
    ref, q = F.warp_print(x, SR), F.warp_print(y, SR)
    qh, _ = F.warp_query_hashes(q)
    warp_shared = np.isin(F.warp_hashes(ref), qh).mean()
    exact_shared = np.isin(F.fingerprint(x, SR).hashes, F.fingerprint(y, SR).hashes).mean()
    assert warp_shared >= 0.5 > 0.2 >= exact_shared


def test_warp_bands_undoes_a_warp():
    """Bands of a copy 5 % slower and 1 semitone up, warped back by the inverse factor,
    correlate with the original's like an unwarped copy does; left unwarped they do not."""
    rng = np.random.default_rng(2)
    x = R.texture("tones", 5.0, rng)
    a = F.band_features(x, SR)
    y = R.pitch_shift(200)(R.speed(1 / 1.05)(x, SR, rng), SR, rng)
    b = F.band_features(y, SR)
    # y: 5 % longer, pitch -5 % from the speed then +2 semitones: net semitones
    semis = 2 - 12 * np.log2(1.05)
    back = F.warp_bands(b, 1 / 1.05, -semis)
    warped, _, _ = F.correlation_at(back, a, range(-3, 4))
    plain, _, _ = F.correlation_at(b, a, range(-3, 4))
    assert warped >= 0.8 and plain < 0.7
