"""Vectorized STFT / iSTFT in numpy + scipy.fft, equal to HTDemucs's `_spec` / `_ispec`.

Both work on any leading batch shape, so a whole batch of chunks (and all sources and channels)
goes through one `rfft`/`irfft` call. Conventions, as demucs (`htdemucs.py`, `spec.py`):
periodic Hann window of `nfft`, hop `nfft // 4`, `normalized=True` (scaled by nfft**-0.5),
reflect padding of 3/2 hop plus `center=True`'s nfft/2, Nyquist bin dropped, and the frames
cropped so that a signal of L samples gives exactly T = ceil(L / hop) frames.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view


@lru_cache(maxsize=8)
def hann(nfft: int) -> np.ndarray:
    """torch.hann_window(nfft) (periodic), float32."""
    n = np.arange(nfft, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / nfft)).astype(np.float32)


def frames_for(length: int, hop: int) -> int:
    return math.ceil(length / hop)


def spec(x: np.ndarray, nfft: int, workers: int = 1) -> np.ndarray:
    """HTDemucs `_spec`: x (..., L) float32 -> complex64 (..., nfft//2, ceil(L/hop))."""
    hop = nfft // 4
    length = x.shape[-1]
    T = frames_for(length, hop)
    pad = hop // 2 * 3
    if length <= pad + T * hop - length or length <= nfft // 2:
        raise ValueError(f"signal of {length} samples is too short for reflect padding")
    lead = [(0, 0)] * (x.ndim - 1)
    x = np.pad(x, lead + [(pad, pad + T * hop - length)], mode="reflect")
    x = np.pad(x, lead + [(nfft // 2, nfft // 2)], mode="reflect")  # torch.stft center=True
    # torch.stft gives T + 4 frames here; HTDemucs keeps frames 2 .. T + 1.
    frames = sliding_window_view(x, nfft, axis=-1)[..., 2 * hop::hop, :][..., :T, :]
    windowed = frames * hann(nfft)
    z = scipy.fft.rfft(windowed, axis=-1, workers=workers)[..., : nfft // 2]
    z *= np.float32(nfft ** -0.5)
    return np.swapaxes(z, -1, -2).astype(np.complex64, copy=False)


@lru_cache(maxsize=8)
def _envelope(frames: int, nfft: int, hop: int) -> np.ndarray:
    """Overlap-added window**2 of `frames` frames: what torch.istft divides by."""
    w2 = (hann(nfft) ** 2).reshape(nfft // hop, hop)
    env = np.zeros((frames + nfft // hop - 1, hop), np.float32)
    for r in range(nfft // hop):
        env[r:r + frames] += w2[r]
    return env.reshape(-1)


def _overlap_add(frames: np.ndarray, hop: int, offset: int) -> np.ndarray:
    """Sum frames (..., N, nfft) placed at (offset + j) * hop into (..., (offset+N+R-1)*hop)."""
    *lead, n, nfft = frames.shape
    ratio = nfft // hop
    blocks = frames.reshape(*lead, n, ratio, hop)
    out = np.zeros((*lead, offset + n + ratio - 1, hop), np.float32)
    for r in range(ratio):
        out[..., offset + r: offset + r + n, :] += blocks[..., :, r, :]
    return out.reshape(*lead, -1)


def ispec(z: np.ndarray, length: int, workers: int = 1) -> np.ndarray:
    """HTDemucs `_ispec`: complex (..., F, T) -> float32 (..., length); nfft = 2F."""
    F, T = z.shape[-2:]
    frames = np.zeros((*z.shape[:-2], T, F + 1), np.complex64)  # + the dropped Nyquist bin
    frames[..., :F] = np.swapaxes(z, -1, -2)
    return _ispec_frames(frames, length, workers)


def ispec_cac(m: np.ndarray, length: int, workers: int = 1) -> np.ndarray:
    """`ispec(from_cac(m))` without the temporaries: (..., 2C, F, T) float32 -> (..., C, length).

    The real/imaginary channel pairs are copied once, transposed, into an interleaved buffer
    that *is* the complex64 frames (with the zero Nyquist bin), so no complex128 temporaries
    and no padding copy are made; this halves the iSTFT's cost per chunk.
    """
    *lead, c2, F, T = m.shape
    pairs = m.reshape(*lead, c2 // 2, 2, F, T)
    buf = np.zeros((*lead, c2 // 2, T, F + 1, 2), np.float32)
    buf[..., :F, :] = np.moveaxis(pairs, -3, -1).swapaxes(-2, -3)
    return _ispec_frames(buf.view(np.complex64)[..., 0], length, workers)


def _ispec_frames(z: np.ndarray, length: int, workers: int) -> np.ndarray:
    """complex64 frames (..., T, nfft/2 + 1) -> float32 (..., length), as HTDemucs `_ispec`."""
    nfft = 2 * (z.shape[-1] - 1)
    hop = nfft // 4
    T = z.shape[-2]
    pad = hop // 2 * 3
    frames = scipy.fft.irfft(z, n=nfft, axis=-1, workers=workers)
    frames *= hann(nfft) * np.float32(nfft ** 0.5)
    # demucs pads two all-zero frames on each side: they add nothing to the signal but do
    # add to the window envelope, so the envelope is that of T + 4 frames.
    y = _overlap_add(frames, hop, offset=2)
    env = _envelope(T + 4, nfft, hop)
    start = nfft // 2 + pad  # center=True trim, then HTDemucs's own crop
    if start + length > y.shape[-1]:
        raise ValueError(f"{T} frames cannot give {length} samples")
    return y[..., start:start + length] / env[start:start + length]


def to_cac(z: np.ndarray) -> np.ndarray:
    """complex (B, C, F, T) -> float32 (B, 2C, F, T), channel 2c + (real, imag), as demucs."""
    B, C, F, T = z.shape
    return np.stack([z.real, z.imag], axis=2).reshape(B, 2 * C, F, T)


def from_cac(m: np.ndarray) -> np.ndarray:
    """float32 (..., 2C, F, T) -> complex64 (..., C, F, T): demucs `_mask` with cac=True."""
    *lead, c2, F, T = m.shape
    pairs = m.reshape(*lead, c2 // 2, 2, F, T)
    return (pairs[..., 0, :, :] + 1j * pairs[..., 1, :, :]).astype(np.complex64)
