"""Audio front-end of CLAP: log-mel features, 10-second fitting and the feature-fusion input.

Everything here follows LAION-CLAP (reference/clap.md §1.4-1.6) because released checkpoints
only give the published embeddings on exactly these features:

* 48 kHz, Hann window 1024 (periodic), hop 480, centre padding by reflection, power spectrum,
  64 mel bins over 50-14000 Hz, ``10*log10(max(x, 1e-10))`` (ref 1.0, no top_db).
* Two filterbanks: non-fusion models compute the mel inside the model with torchlibrosa's
  filterbank (librosa defaults: Slaney scale, Slaney area norm); fusion models get
  ``mel_fusion`` from the data loader, computed like torchaudio (HTK scale, no norm).
* Waveforms go through an int16 round trip first, as LAION's loader and ``hook.py`` do.

The random choices (crop start, fusion chunk starts) take an explicit ``numpy`` Generator so
that the data loader can make them a pure function of (seed, epoch, sample key): that is what
makes a resumed run see exactly the crops an uninterrupted run would have seen.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

TRUNCATING_MODES = ("rand_trunc", "fusion")
FILLING_MODES = ("repeatpad", "pad", "repeat")


@dataclass(frozen=True)
class AudioConfig:
    """The ``audio_cfg`` block of a LAION model config (same field names)."""

    model_type: str = "HTSAT"
    model_name: str = "tiny"
    sample_rate: int = 48000
    audio_length: int = 1024
    window_size: int = 1024
    hop_size: int = 480
    fmin: int = 50
    fmax: int = 14000
    class_num: int = 527
    mel_bins: int = 64
    clip_samples: int = 480000

    @classmethod
    def from_dict(cls, cfg: dict) -> "AudioConfig":
        """Keeps the fields we know; model-size keys (embed_dim, depths, ...) live elsewhere."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})

    @property
    def chunk_frames(self) -> int:
        """Frames of a ``clip_samples`` clip with centre padding (1001 for 10 s at hop 480)."""
        return self.clip_samples // self.hop_size + 1


@lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                   htk: bool) -> np.ndarray:
    """(n_fft//2+1, n_mels) filterbank. ``htk=False``: librosa default (Slaney scale and
    area norm), the torchlibrosa bank of non-fusion models. ``htk=True``: HTK scale with no
    norm, which is the filterbank torchaudio's ``MelSpectrogram`` builds (fusion models)."""
    import librosa

    if htk:
        bank = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
                                   fmax=fmax, htk=True, norm=None)
    else:
        bank = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
                                   fmax=fmax)
    return np.ascontiguousarray(bank.T.astype(np.float32))


def power_spectrogram(wave: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """|STFT|^2 of ``wave`` (..., samples) -> (..., frames, n_fft//2+1), always in float32."""
    shape = wave.shape[:-1]
    flat = wave.reshape(-1, wave.shape[-1]).float()
    window = torch.hann_window(n_fft, periodic=True, device=wave.device, dtype=torch.float32)
    with torch.autocast(device_type=wave.device.type, enabled=False):
        spec = torch.stft(flat, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=window,
                          center=True, pad_mode="reflect", return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2
    return power.transpose(-1, -2).reshape(*shape, power.shape[-1], power.shape[-2])


def power_to_db(power: torch.Tensor, amin: float = 1e-10) -> torch.Tensor:
    """10*log10(max(x, amin)) with ref 1.0 and no top_db (torchlibrosa and torchaudio alike)."""
    return 10.0 * torch.log10(torch.clamp(power, min=amin))


def log_mel(wave: torch.Tensor, cfg: AudioConfig, htk: bool) -> torch.Tensor:
    """Log-mel (..., frames, mel_bins) of a 48 kHz waveform (..., samples)."""
    bank = torch.from_numpy(mel_filterbank(cfg.sample_rate, cfg.window_size, cfg.mel_bins,
                                           cfg.fmin, cfg.fmax, htk)).to(wave.device)
    return power_to_db(power_spectrogram(wave, cfg.window_size, cfg.hop_size) @ bank)


def int16_roundtrip(wave: torch.Tensor) -> torch.Tensor:
    """Clip to [-1, 1], quantise to int16 and back, as LAION does before any feature."""
    return (torch.clamp(wave, -1.0, 1.0) * 32767.0).to(torch.int16).to(torch.float32) / 32767.0


def fill_to_length(wave: torch.Tensor, max_len: int, mode: str) -> torch.Tensor:
    """Make a clip shorter than ``max_len`` exactly ``max_len`` long.

    ``repeatpad``: tile floor(max_len/len) times, then zero-pad (so a 6 s clip is one copy
    plus 4 s of zeros); ``pad``: zero-pad; ``repeat``: tile floor(max_len/len)+1 times and cut.
    """
    n = wave.shape[-1]
    if n >= max_len:
        return wave
    if n == 0:
        raise ValueError("empty waveform")
    if mode == "repeatpad":
        wave = wave.repeat(max_len // n)
        return F.pad(wave, (0, max_len - wave.shape[-1]))
    if mode == "pad":
        return F.pad(wave, (0, max_len - n))
    if mode == "repeat":
        return wave.repeat(max_len // n + 1)[:max_len]
    raise ValueError(f"unknown data filling {mode!r}; expected one of {FILLING_MODES}")


def fusion_chunk_ranges(total_frames: int, chunk_frames: int) -> list[np.ndarray]:
    """Valid start frames 0..total-chunk split into three consecutive nearly equal ranges
    (front, middle, back), numpy ``array_split`` style; an empty middle/back range falls back
    to start 0 exactly as LAION does."""
    ranges = np.array_split(np.arange(0, total_frames - chunk_frames + 1), 3)
    for i in (1, 2):
        if len(ranges[i]) == 0:
            ranges[i] = np.array([0])
    return ranges


def resize_mel(mel: torch.Tensor, frames: int) -> torch.Tensor:
    """Global fusion view: the whole (T, mel) image resized to (frames, mel).

    LAION calls ``torchvision.transforms.Resize`` on a (1, T, 64) tensor: bilinear, and with
    torchvision >= 0.17 antialiased. torchvision has no CPU build for our torch, so this is the
    same operation through ``F.interpolate`` (bilinear, align_corners=False, antialias=True).
    Older torchvision without antialias differs slightly for long clips (a known parity hazard).
    """
    out = F.interpolate(mel[None, None].float(), size=(frames, mel.shape[-1]), mode="bilinear",
                        align_corners=False, antialias=True)
    return out[0, 0]


def audio_features(wave: torch.Tensor, cfg: AudioConfig, truncating: str, filling: str,
                   rng: np.random.Generator, need_fusion: bool | None = None) -> dict:
    """Turn one mono 48 kHz clip into the model input LAION's collate builds.

    Returns ``waveform`` (clip_samples,), ``longer`` (bool tensor of shape (1,)) and, in fusion
    mode, ``mel_fusion`` (4, chunk_frames, mel_bins) = [global, front, middle, back].
    """
    if truncating not in TRUNCATING_MODES:
        raise ValueError(f"unknown data truncating {truncating!r}; expected {TRUNCATING_MODES}")
    need_fusion = (truncating == "fusion") if need_fusion is None else need_fusion
    max_len = cfg.clip_samples
    wave = int16_roundtrip(wave)
    out: dict = {}
    if wave.shape[-1] > max_len:
        longer = True
        if need_fusion:
            mel = log_mel(wave, cfg, htk=True)
            chunk = cfg.chunk_frames
            total = mel.shape[0]
            if total == chunk:  # longer than max_len by less than one hop: use it whole
                out["mel_fusion"] = torch.stack([mel] * 4)
                longer = False
            else:
                starts = [int(rng.choice(r)) for r in fusion_chunk_ranges(total, chunk)]
                local = [mel[s:s + chunk] for s in starts]
                out["mel_fusion"] = torch.stack([resize_mel(mel, chunk)] + local)
        start = int(rng.integers(0, wave.shape[-1] - max_len + 1))
        wave = wave[start:start + max_len]
    else:
        longer = False
        wave = fill_to_length(wave, max_len, filling)
        if need_fusion:
            mel = log_mel(wave, cfg, htk=True)
            out["mel_fusion"] = torch.stack([mel] * 4)
    out["waveform"] = wave
    out["longer"] = torch.tensor([longer])
    return out


class _FrozenConv(torch.nn.Module):
    """Holds a frozen ``weight`` under the name torchlibrosa uses (``conv_real.weight``)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)


class _STFTWeights(torch.nn.Module):
    def __init__(self, n_fft: int):
        super().__init__()
        n = np.arange(n_fft)
        window = np.hanning(n_fft + 1)[:-1]  # periodic Hann, as librosa.get_window(fftbins=True)
        k = np.arange(n_fft // 2 + 1)
        angle = -2.0 * np.pi * np.outer(k, n) / n_fft
        self.conv_real = _FrozenConv(torch.tensor(np.cos(angle) * window, dtype=torch.float32)[:, None])
        self.conv_imag = _FrozenConv(torch.tensor(np.sin(angle) * window, dtype=torch.float32)[:, None])


class Spectrogram(torch.nn.Module):
    """Power spectrogram (B, samples) -> (B, 1, frames, freq).

    torchlibrosa computes the STFT as a frozen Conv1d whose weights are the windowed DFT
    matrix; LAION checkpoints therefore carry ``stft.conv_real/conv_imag.weight``. We keep those
    frozen tensors (so checkpoints load with strict=True) and compute the identical transform
    with ``torch.stft``, which is far cheaper on CPU; tests check that the two agree."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.stft = _STFTWeights(n_fft)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return power_spectrogram(wave, self.n_fft, self.hop)[:, None]

    def conv_forward(self, wave: torch.Tensor) -> torch.Tensor:
        """torchlibrosa's own path (conv over the reflect-padded signal); used by tests."""
        x = F.pad(wave[:, None].float(), (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        real = F.conv1d(x, self.stft.conv_real.weight, stride=self.hop)
        imag = F.conv1d(x, self.stft.conv_imag.weight, stride=self.hop)
        return (real ** 2 + imag ** 2).transpose(1, 2)[:, None]


class LogmelFilterBank(torch.nn.Module):
    """(B, 1, frames, freq) power -> (B, 1, frames, mel) dB, filterbank stored as ``melW``."""

    def __init__(self, cfg: AudioConfig, htk: bool = False):
        super().__init__()
        bank = mel_filterbank(cfg.sample_rate, cfg.window_size, cfg.mel_bins, cfg.fmin,
                              cfg.fmax, htk)
        self.melW = torch.nn.Parameter(torch.from_numpy(bank.copy()), requires_grad=False)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=power.device.type, enabled=False):
            return power_to_db(power.float() @ self.melW.float())


class SpecAugmentation(torch.nn.Module):
    """Training-only stripe dropping on (B, C, time, mel): 2 time stripes of width < 64 and 2
    mel stripes of width < 8 per item, torchlibrosa's recipe (no parameters)."""

    def __init__(self, time_drop_width: int = 64, time_stripes_num: int = 2,
                 freq_drop_width: int = 8, freq_stripes_num: int = 2):
        super().__init__()
        self.stripes = ((2, time_drop_width, time_stripes_num), (3, freq_drop_width, freq_stripes_num))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        x = x.clone()
        for dim, width, num in self.stripes:
            total = x.shape[dim]
            for n in range(x.shape[0]):
                for _ in range(num):
                    distance = int(torch.randint(0, width, (1,)))
                    start = int(torch.randint(0, max(1, total - distance), (1,)))
                    if dim == 2:
                        x[n, :, start:start + distance, :] = 0
                    else:
                        x[n, :, :, start:start + distance] = 0
        return x
