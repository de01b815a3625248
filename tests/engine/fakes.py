"""A cheap, deterministic stand-in for the network core, for tests of the machinery around it
(streaming, resume, jobs) that do not need HTDemucs's numbers: a short segment, microseconds
per chunk."""

from __future__ import annotations

import numpy as np

from engine.core import CoreShapes
from engine.separator import SeparationOptions, Separator

SOURCES = ("drums", "bass", "other", "vocals")
SHAPES = CoreShapes(samplerate=44100, segment_samples=16384, channels=2, sources=SOURCES,
                    nfft=4096, hop=1024, freqs=2048, frames=16)


class _Network:
    """A deterministic, nonlinear stand-in for the core. Like a real batched GEMM, an item's
    result depends (slightly) on what else is in its batch, so a resume that batched chunks
    differently from the first run would show."""

    name = "fake"
    shapes = SHAPES
    host_bound = True

    def __init__(self, seed: int, max_batch: int = 1) -> None:
        self.gains = np.random.default_rng(seed).uniform(0.2, 1.5, len(SOURCES)).astype(
            np.float32)
        self.max_batch = max_batch

    def predict(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = self.gains[None, :, None, None, None]
        spec_out = np.tanh(spec[:, None] * g) * np.float32(0.5)
        time_out = np.tanh(wave[:, None] * g[..., 0]) * np.float32(0.25)
        if len(wave) > 1:
            time_out = time_out + np.float32(1e-3) * wave.mean(axis=0)[None, None]
        return spec_out.astype(np.float32), time_out.astype(np.float32)


def fake_separator(members: int, shifts: int, batch: int = 1, **options: object) -> Separator:
    weights = np.random.default_rng(members).uniform(0.5, 1.0, (members, len(SOURCES)))
    return Separator(weights.tolist(), [_Network(m, batch) for m in range(members)],
                     SeparationOptions(shifts=shifts, **options))  # type: ignore[arg-type]
