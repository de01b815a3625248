"""`CoreShapes`: the fixed tensor sizes of one model's network core, with no torch import.

The backends that run an exported core (OpenVINO, ONNX Runtime, CoreML) and the separator
need only these sizes, not the model: they live here so that a start from a cached export
never imports torch (about 2.7 s here). `engine.core.core_shapes` reads them from a model.

Layout (B = batch, C = audio channels, S = sources, F = nfft/2 bins, T = frames, L = segment):
    spec (B, 2C, F, T) float32, wave (B, C, L) float32
    -> spec_out (B, S, 2C, F, T) float32, time_out (B, S, C, L) float32
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CoreShapes:
    """The fixed tensor sizes of one model's core, derived from the model itself."""

    samplerate: int
    segment_samples: int  # L: the training length, int(segment * samplerate)
    channels: int  # C
    sources: tuple[str, ...]
    nfft: int
    hop: int
    freqs: int  # F = nfft // 2 (Nyquist bin dropped)
    frames: int  # T = ceil(L / hop)

    @property
    def spec_shape(self) -> tuple[int, int, int]:
        return (2 * self.channels, self.freqs, self.frames)

    @property
    def wave_shape(self) -> tuple[int, int]:
        return (self.channels, self.segment_samples)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CoreShapes:
        raw = json.loads(text)
        raw["sources"] = tuple(raw["sources"])
        return cls(**raw)
