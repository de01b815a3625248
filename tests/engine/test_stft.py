"""engine.stft equals HTDemucs's _spec/_ispec (torch) to 1e-6, batched over chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from demucs.htdemucs import HTDemucs

from engine import stft
from engine.testmodel import architecture_kwargs


@pytest.fixture(scope="module")
def model() -> HTDemucs:
    return HTDemucs(sources=["a", "b"], **architecture_kwargs(tiny=True)).eval()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("length", [343980, 100_001, 9000])
def test_spec_and_ispec_match_demucs(model: HTDemucs, length: int) -> None:
    torch.manual_seed(length)
    x = torch.randn(3, 2, length)  # a batch of three stereo chunks
    want = model._spec(x).numpy()
    got = stft.spec(x.numpy(), model.nfft)
    assert got.shape == want.shape == (3, 2, 2048, -(-length // 1024))
    assert got.dtype == np.complex64
    assert _rel(got, want) <= 1e-6
    back_want = model._ispec(torch.from_numpy(want), length).numpy()
    back_got = stft.ispec(want, length)
    assert back_got.dtype == np.float32
    assert _rel(back_got, back_want) <= 1e-6


def test_cac_layout_matches_demucs(model: HTDemucs) -> None:
    z = stft.spec(np.random.default_rng(0).standard_normal((2, 2, 20000), np.float32), 4096)
    want = model._magnitude(torch.from_numpy(z)).numpy()
    assert np.array_equal(stft.to_cac(z), want)
    masked = model._mask(torch.from_numpy(z), torch.from_numpy(want)[:, None]).numpy()
    assert np.array_equal(stft.from_cac(want[:, None]), masked)


def test_ispec_inverts_spec_in_the_interior() -> None:
    # band-limited: demucs drops the Nyquist bin, which white noise would miss
    t = np.arange(50_000) / 44100
    x = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 3001 * t + 1)])
    x = x.astype(np.float32)
    y = stft.ispec(stft.spec(x, 4096), 50_000)
    # demucs crops the edge frames, so only the interior reconstructs perfectly
    inner = slice(4096, -4096)
    assert _rel(y[:, inner], x[:, inner]) <= 1e-5
    assert _rel(y, x) > 1e-2  # and the edges really do not: the crop is reproduced


def test_ispec_cac_equals_ispec_of_from_cac() -> None:
    rng = np.random.default_rng(5)
    m = rng.standard_normal((2, 3, 4, 2048, 20)).astype(np.float32)  # (B, S, 2C, F, T)
    want = stft.ispec(stft.from_cac(m), 19_000)
    got = stft.ispec_cac(m, 19_000, workers=2)
    assert got.shape == (2, 3, 2, 19_000) and got.dtype == np.float32
    assert np.array_equal(got, want)
