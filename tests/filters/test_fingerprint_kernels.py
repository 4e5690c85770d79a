"""The numba kernels of the fingerprint equal their plain numpy/scipy definitions."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter

from laion_audio.filters import fingerprint as fp


def _real_band(debian_sounds) -> np.ndarray:
    from robustness import load_mono  # benchmarks/ (tests/filters/conftest.py)

    x = load_mono(debian_sounds[len(debian_sounds) // 2], max_seconds=8)
    return np.ascontiguousarray(fp._log_spectrogram(fp.to_mono_16k(x, 48_000))[:, fp.F_MIN:fp.F_MAX])


def test_max_filter_equals_scipy(debian_sounds):
    rng = np.random.default_rng(0)
    cases = [rng.normal(size=(n, m)).astype(np.float32) for n, m in ((1, 1), (3, 50), (40, 7), (97, 444))]
    cases.append(np.round(rng.normal(size=(60, 80)), 1).astype(np.float32))     # many ties
    cases.append(_real_band(debian_sounds))
    for x in cases:
        for w in (1, 3, 11, 21):
            want = maximum_filter(x, size=(1, w), mode="constant", cval=-np.inf)
            assert np.array_equal(fp._max_filter_rows(x, w), want), (x.shape, w)
        two_d = fp._max_filter_rows(np.ascontiguousarray(fp._max_filter_rows(x, fp.NEIGH_F).T),
                                    fp.NEIGH_T).T
        assert np.array_equal(two_d, maximum_filter(x, size=(fp.NEIGH_T, fp.NEIGH_F),
                                                    mode="constant", cval=-np.inf))


def _numpy_correlation(a, b, d, min_overlap=12, range_db=30.0):
    """The definition: floor, remove band means, remove frame means, Pearson over the overlap."""
    i0, i1 = max(0, -d), min(len(a), len(b) - d)
    if i1 - i0 < min_overlap:
        return None
    x, y = a[i0:i1].astype(np.float64), b[i0 + d:i1 + d].astype(np.float64)
    x, y = np.maximum(x, x.max() - range_db), np.maximum(y, y.max() - range_db)
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    x, y = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def test_correlation_kernel_equals_its_definition(debian_sounds):
    band = _real_band(debian_sounds)
    a = fp._bands(np.pad(band, ((0, 0), (fp.F_MIN, 513 - fp.F_MAX)), constant_values=-180))
    rng = np.random.default_rng(1)
    b = np.concatenate([rng.normal(-60, 5, size=(30, a.shape[1])), a, a[:40]]).astype(np.float16)
    for d in (-40, -3, 0, 7, 30, 31, 200, 10_000):
        score, n, best = fp.correlation_at(a, b, [d])
        want = _numpy_correlation(a, b.astype(np.float32), d)
        if want is None:
            assert best is None
        else:
            assert best == d and abs(score - want) < 1e-5
    score, n, best = fp.correlation_at(a, b, range(-5, 40))
    assert best == 30 and score > 0.999            # ``a`` sits 30 frames into ``b``
