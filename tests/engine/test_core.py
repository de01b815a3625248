"""Core surgery: HTDemucsCore + numpy STFT/iSTFT equals HTDemucs.forward on a segment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from demucs.pretrained import get_model

from engine import stft
from engine.core import HTDemucsCore, core_shapes


def _full_vs_core(model: torch.nn.Module, seed: int) -> float:
    shapes = core_shapes(model)
    torch.manual_seed(seed)
    x = torch.randn(1, shapes.channels, shapes.segment_samples)
    core = HTDemucsCore(model).eval()
    with torch.inference_mode():
        full = model(x).numpy()
        spec = torch.from_numpy(stft.to_cac(stft.spec(x.numpy(), shapes.nfft)))
        spec_out, time_out = core(spec, x)
    assert spec_out.shape == (1, len(shapes.sources), *shapes.spec_shape)
    assert time_out.shape == (1, len(shapes.sources), *shapes.wave_shape)
    assert spec_out.dtype == time_out.dtype == torch.float32
    y = stft.ispec(stft.from_cac(spec_out.numpy()), shapes.segment_samples) + time_out.numpy()
    return float(np.abs(y - full).max() / np.abs(full).max())


def test_shapes_come_from_the_model(tiny_repo: Path) -> None:
    model = get_model("htdemucs_6s", repo=tiny_repo).models[0]
    s = core_shapes(model)
    assert (s.segment_samples, s.frames, s.freqs, s.channels) == (343980, 336, 2048, 2)
    assert s.sources == ("drums", "bass", "other", "vocals", "guitar", "piano")
    model.segment = model.segment / 2  # a different training length is followed, not assumed
    assert core_shapes(model).segment_samples == 171990
    assert core_shapes(model).frames == 168


def test_tiny_core_equals_full_forward(tiny_repo: Path) -> None:
    assert _full_vs_core(get_model("htdemucs", repo=tiny_repo).models[0].eval(), 0) <= 1e-5


@pytest.mark.slow
def test_real_architecture_core_equals_full_forward(real_repo: Path) -> None:
    assert _full_vs_core(get_model("htdemucs_6s", repo=real_repo).models[0].eval(), 1) <= 1e-5
