"""Overlap-add of chunk outputs and the mix of passes into final stems, streaming.

`PassAccumulator` keeps one pass's weighted sum over the one segment that is still open and
hands back each region as soon as no later chunk of that pass can touch it. `Combiner` mixes
those regions across passes exactly as demucs does — per bag member the mean over its shifts,
then the bag's per-source weights, then the track's de-normalisation — and writes a region to
the stem buffers once every pass has handed it over. The per-sample arithmetic and its order
are those of `demucs.apply.apply_model`, so streamed stems equal a whole-song computation
bit for bit (tests/engine/test_streaming.py).

Shapes: S sources, C channels; regions are (S, C, n) float32 in track samples (model rate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.chunking import Chunk, Pass
from engine.stembuffers import StemBuffers


class PassAccumulator:
    def __init__(self, p: Pass, sources: int, channels: int, segment: int,
                 weight: np.ndarray, first_chunk: int = 0) -> None:
        """`first_chunk` > 0 resumes the pass there: the sums start from zero at that chunk's
        first sample, so every sample that no earlier chunk touches gets exactly the sums
        of an uninterrupted run (earlier samples come out incomplete: the caller drops them)."""
        self.p = p
        self.segment = segment
        self.weight = weight
        self.out = np.zeros((sources, channels, segment), np.float32)
        self.sum_weight = np.zeros(segment, np.float32)
        self.next_chunk = first_chunk
        # track position of out[..., 0]
        self.origin = p.chunks[first_chunk].out_start if first_chunk < len(p.chunks) else p.stop

    @property
    def frontier(self) -> int:
        """Everything of this pass before this track position is final."""
        return self.origin

    @property
    def finished(self) -> bool:
        return self.next_chunk == len(self.p.chunks)

    def add(self, chunk: Chunk, chunk_out: np.ndarray) -> tuple[int, np.ndarray]:
        """Add a chunk's (S, C, n) output; return (start, region) now final for this pass."""
        assert chunk.index == self.next_chunk and chunk.out_start == self.origin
        n = chunk.length
        self.out[..., :n] += self.weight[:n] * chunk_out
        self.sum_weight[:n] += self.weight[:n]
        self.next_chunk += 1
        nxt = self.p.chunks[self.next_chunk].out_start if not self.finished else self.p.stop
        m = nxt - self.origin
        region = self.out[..., :m] / self.sum_weight[:m]
        start = self.origin
        self._shift(m)
        return start, region

    def _shift(self, m: int) -> None:
        keep = self.segment - m
        self.out[..., :keep] = self.out[..., m:]
        self.out[..., keep:] = 0.0
        self.sum_weight[:keep] = self.sum_weight[m:]
        self.sum_weight[keep:] = 0.0
        self.origin += m


class Combiner:
    """Mixes pass regions into final, de-normalised stems in `sink` (see module docstring)."""

    def __init__(self, passes: Sequence[Pass], shifts: int, weights: np.ndarray,
                 sink: StemBuffers, capacity: int, mean: float, std: float,
                 finalized: int = 0) -> None:
        """`finalized` > 0 resumes: the stems before it are final in `sink` already, and
        regions handed over for them are ignored."""
        self.passes = list(passes)
        self.shifts = shifts
        self.weights = weights.astype(np.float32)  # (members, S)
        self.totals = self.weights.sum(axis=0)  # (S,)
        self.sink = sink
        self.length = sink.frames
        self.mean, self.std = np.float32(mean), np.float32(std)
        S, C = len(sink.sources), sink.channels
        self.pending = np.zeros((len(self.passes), S, C, capacity), np.float32)
        self.finalized = finalized  # the stems are final (and written) before this position

    def add(self, pass_index: int, start: int, region: np.ndarray) -> None:
        a, b = max(start, self.finalized), min(start + region.shape[-1], self.length)
        if b <= a:
            return
        cap = self.pending.shape[-1]
        assert b - self.finalized <= cap, "a pass ran ahead of the others"
        self.pending[pass_index, ..., a - self.finalized:b - self.finalized] = \
            region[..., a - start:b - start]

    def finalize(self, upto: int) -> int:
        """Mix, de-normalise and write [finalized, upto); returns the new final position."""
        upto = min(upto, self.length)
        n = upto - self.finalized
        if n <= 0:
            return self.finalized
        estimate: Any = 0.0  # starts as demucs does: 0. + first member
        for member, w in enumerate(self.weights):
            out: Any = 0.0
            for p in self.passes:
                if p.member == member:
                    out = out + self.pending[p.index, ..., :n]
            if self.shifts:
                out = out / np.float32(self.shifts)
            estimate = estimate + out * w[:, None, None]
        estimate = estimate / self.totals[:, None, None]
        self.sink.write(self.finalized, estimate * self.std + self.mean)
        self.pending[..., :-n] = self.pending[..., n:].copy()
        self.pending[..., -n:] = 0.0
        self.finalized = upto
        return upto
