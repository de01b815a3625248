"""Streaming sample-rate conversion with soxr, shared by decode and the writers.

Both ends of the pipeline convert long signals block by block (a 20-minute song never sits in
RAM), so this wraps `soxr.ResampleStream`, whose concatenated output equals one-shot
`soxr.resample` of the whole signal. Blocks are channel-first (C, n) float32 like every other
engine array; soxr itself wants frame-first (n, C), hence the transposes here.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import soxr

QUALITY = "HQ"  # soxr's high quality: 20-bit precision, flat to ~0.91 of Nyquist (as librosa)


def resampled_length(frames: int, in_rate: int, out_rate: int) -> int:
    """round(frames * out_rate / in_rate), the exact frame count a conversion must give.

    Computed on the exact fraction so very long signals never suffer float error; ties round
    to even, as Python's `round` does, so callers writing `round(n * out / in)` agree.
    """
    if in_rate <= 0 or out_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
    return round(Fraction(frames * out_rate, in_rate))


class StreamResampler:
    """Converts a stream of (C, n) float32 blocks from `in_rate` to `out_rate` Hz.

    The output length of the whole stream is within a frame or two of `resampled_length`;
    callers pad or trim the tail to make it exact. With equal rates the blocks pass through
    untouched (bit-identical, not even copied), so decode at the model's rate is lossless.
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.channels = channels
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32",
                                               quality=QUALITY)

    def process(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """block (C, n) float32 at in_rate -> (C, m) float32 at out_rate.

        `last=True` flushes the filter's tail; give it exactly once, with the final block
        (which may be empty, shape (C, 0)).
        """
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"expected a ({self.channels}, n) block, got {block.shape}")
        block = block.astype(np.float32, copy=False)
        if self._stream is None:
            return block
        frames_first = np.ascontiguousarray(block.T)
        return self._stream.resample_chunk(frames_first, last=last).T
