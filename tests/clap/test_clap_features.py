"""The CLAP front-end against librosa/torchaudio-style references and LAION's fitting rules."""
import librosa
import numpy as np
import pytest
import torch

from laion_audio.clap.features import (AudioConfig, Spectrogram, LogmelFilterBank, audio_features,
                                       fill_to_length, fusion_chunk_ranges, int16_roundtrip, log_mel,
                                       mel_filterbank, resize_mel)

CFG = AudioConfig()


def _wave(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 48000)) / 48000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def _librosa_logmel(x, htk):
    kwargs = dict(htk=True, norm=None) if htk else {}
    mel = librosa.feature.melspectrogram(y=x.astype(np.float64), sr=48000, n_fft=1024, hop_length=480,
                                         win_length=1024, window="hann", center=True, pad_mode="reflect",
                                         power=2.0, n_mels=64, fmin=50, fmax=14000, **kwargs)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).T


@pytest.mark.parametrize("htk", [False, True])
def test_log_mel_matches_librosa(htk):
    x = _wave(2.5)
    ours = log_mel(torch.from_numpy(x), CFG, htk=htk).numpy()
    ref = _librosa_logmel(x, htk)
    assert ours.shape == ref.shape == (2.5 * 100 + 1, 64)
    assert np.abs(ours - ref).max() < 1e-2  # dB; float32 vs float64


def test_ten_seconds_is_1001_frames_and_filterbanks_differ():
    x = torch.from_numpy(_wave(10))
    assert log_mel(x, CFG, htk=False).shape == (1001, 64)
    slaney = mel_filterbank(48000, 1024, 64, 50, 14000, False)
    htk = mel_filterbank(48000, 1024, 64, 50, 14000, True)
    assert slaney.shape == htk.shape == (513, 64)
    assert not np.allclose(slaney, htk)
    assert slaney.max() < 0.05 < htk.max() <= 1.0  # area-normalised vs unit-peak triangles


def test_htk_bank_is_torchaudio_formula():
    """torchaudio's melscale_fbanks (mel_scale='htk', norm=None), written out independently."""
    n_freqs, f_min, f_max, n_mels, sr = 513, 50.0, 14000.0, 64, 48000
    all_freqs = np.linspace(0, sr // 2, n_freqs)
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
    mel_to_hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)
    f_pts = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0, np.minimum(down, up))
    assert np.allclose(mel_filterbank(sr, 1024, n_mels, f_min, f_max, True), fb, atol=1e-5)


def test_in_model_front_end_conv_weights_equal_stft():
    """The frozen torchlibrosa-named DFT weights give the torch.stft spectrogram we compute."""
    spec = Spectrogram(1024, 480)
    x = torch.from_numpy(_wave(1.0))[None]
    fast, conv = spec(x), spec.conv_forward(x)
    assert fast.shape == conv.shape == (1, 1, 101, 513)
    assert torch.allclose(fast, conv, rtol=1e-3, atol=1e-3)
    db = LogmelFilterBank(CFG)(fast)[0, 0].numpy()
    assert np.abs(db - _librosa_logmel(x[0].numpy(), htk=False)).max() < 1e-2


def test_fill_modes():
    x = torch.arange(1, 4, dtype=torch.float32)  # len 3
    assert fill_to_length(x, 8, "repeatpad").tolist() == [1, 2, 3, 1, 2, 3, 0, 0]
    assert fill_to_length(x, 8, "pad").tolist() == [1, 2, 3, 0, 0, 0, 0, 0]
    assert fill_to_length(x, 8, "repeat").tolist() == [1, 2, 3, 1, 2, 3, 1, 2]
    assert fill_to_length(torch.ones(5), 8, "repeatpad").tolist() == [1] * 5 + [0] * 3  # > half: one copy
    with pytest.raises(ValueError):
        fill_to_length(x, 8, "stretch")


def test_int16_roundtrip():
    x = torch.tensor([0.0, 0.5, 1.5, -2.0, 1e-6])
    y = int16_roundtrip(x)
    assert y[2] == 1.0 and y[3] == -1.0 and y[4] == 0.0
    assert abs(float(y[1]) - int(0.5 * 32767) / 32767) < 1e-9


def test_short_clip_features_repeatpad_and_fusion_stack():
    x = torch.from_numpy(_wave(3.0))
    out = audio_features(x, CFG, "fusion", "repeatpad", np.random.default_rng(0))
    assert out["waveform"].shape == (480000,)
    assert not bool(out["longer"]) and out["longer"].shape == (1,)
    assert torch.equal(out["waveform"][:144000 * 3], int16_roundtrip(x).repeat(3))
    assert torch.all(out["waveform"][432000:] == 0)
    mf = out["mel_fusion"]
    assert mf.shape == (4, 1001, 64)
    assert all(torch.equal(mf[0], mf[i]) for i in (1, 2, 3))
    assert torch.allclose(mf[0], log_mel(out["waveform"], CFG, htk=True))
    plain = audio_features(x, CFG, "rand_trunc", "repeatpad", np.random.default_rng(0))
    assert "mel_fusion" not in plain and torch.equal(plain["waveform"], out["waveform"])


def test_fusion_chunk_ranges_follow_array_split():
    ranges = fusion_chunk_ranges(2001, 1001)
    assert [r[0] for r in ranges] == [0, 334, 668] and [r[-1] for r in ranges] == [333, 667, 1000]
    tiny = fusion_chunk_ranges(1002, 1001)  # two valid starts: back range empty -> [0]
    assert list(tiny[0]) == [0] and list(tiny[1]) == [1] and list(tiny[2]) == [0]


def test_long_clip_fusion_input():
    x = torch.from_numpy(_wave(25.0, seed=1))
    rng = np.random.default_rng(7)
    out = audio_features(x, CFG, "fusion", "repeatpad", rng)
    assert bool(out["longer"])
    mel = log_mel(int16_roundtrip(x), CFG, htk=True)
    assert mel.shape == (2501, 64)
    mf = out["mel_fusion"]
    assert mf.shape == (4, 1001, 64)
    assert torch.allclose(mf[0], resize_mel(mel, 1001))  # global view first
    ranges = fusion_chunk_ranges(2501, 1001)
    for chunk, r in zip(mf[1:], ranges):  # front, middle, back: an exact window from its range
        starts = [s for s in r if torch.equal(mel[s:s + 1001], chunk)]
        assert starts, "chunk is not a window from its range"
    assert out["waveform"].shape == (480000,)
    # the waveform crop is an exact 10 s window of the clip
    w = int16_roundtrip(x)
    candidates = torch.nonzero(w[:w.numel() - 480000 + 1] == out["waveform"][0]).flatten().tolist()
    assert any(torch.equal(w[s:s + 480000], out["waveform"]) for s in candidates)


def test_resize_is_bilinear_average_when_halving():
    mel = torch.arange(8, dtype=torch.float32)[:, None].repeat(1, 3)  # 8 frames
    half = resize_mel(mel, 4)
    # antialiased bilinear halving averages neighbour pairs (with edge weights): monotone and in range
    assert half.shape == (4, 3) and torch.all(half[1:, 0] > half[:-1, 0])
    assert torch.allclose(resize_mel(mel, 8), mel)


def test_exactly_ten_seconds_is_untouched_and_just_over_uses_whole_clip():
    x = torch.from_numpy(_wave(10.0))
    out = audio_features(x, CFG, "rand_trunc", "repeatpad", np.random.default_rng(0))
    assert torch.equal(out["waveform"], int16_roundtrip(x)) and not bool(out["longer"])
    y = torch.from_numpy(_wave(10.0 + 100 / 48000))  # longer by less than one hop
    out = audio_features(y, CFG, "fusion", "repeatpad", np.random.default_rng(0))
    assert not bool(out["longer"]) and all(torch.equal(out["mel_fusion"][0], out["mel_fusion"][i]) for i in (1, 2, 3))
