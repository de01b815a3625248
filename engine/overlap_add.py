"""Overlap-add of chunk outputs and the mix of passes into final stems, in any chunk order.

A seek-first separation finishes chunks out of order, yet the stems must be bit for bit those
of an in-order run. Float sums depend on their order, so nothing here adds in arrival order:

- `PassAssembler` cuts one pass into *cells*, the ranges between consecutive chunk edges;
  every sample of a cell is touched by the same chunks. It keeps each chunk's output until
  every cell that chunk touches is computed, and computes a cell once all its chunks are in,
  as demucs does: zeros, += weight * chunk in chunk order, / the summed weights. A sample's
  value therefore depends only on the chunks that touch it, never on when they came.
- `Combiner` holds each pass's computed cells and, wherever every pass has its values, mixes
  them exactly as demucs does — per bag member the mean over its shifts, then the bag's
  per-source weights, then the track's de-normalisation — writes them to the stem buffers,
  and adds that range to the set of final intervals (`engine.intervals`).

The per-sample arithmetic and its order are those of `demucs.apply.apply_model`, so the stems
equal a whole-song computation bit for bit (tests/engine/test_streaming.py) in any completion
order (tests/engine/test_seek.py).

Memory: an in-order run holds one chunk's overlapping tail per pass; each island of finished
chunks left behind by a seek holds the overlapping part of its edge chunks (a quarter segment
per pass and edge at the default overlap) until its neighbours are done.

Shapes: S sources, C channels; chunk outputs and regions are (S, C, n) float32 in track
samples (model rate).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.chunking import Chunk, Pass
from engine.intervals import Intervals
from engine.stembuffers import StemBuffers


def needed(a: int, b: int, length: int, final: Intervals) -> bool:
    """Whether the range [a, b) of a pass holds track samples that are not final yet."""
    a, b = max(a, 0), min(b, length)
    return b > a and not final.covers(a, b)


class PassAssembler:
    """One pass's overlap-add, whatever order its chunks arrive in (see module docstring)."""

    def __init__(self, p: Pass, weight: np.ndarray, length: int) -> None:
        """`weight` is the (segment,) chunk weight; `length` the track's samples."""
        self.p = p
        self.weight = weight
        self.length = length
        starts = [c.out_start for c in p.chunks]
        stops = [c.out_stop for c in p.chunks]
        edges = sorted(set(starts) | set(stops))
        # cell i = [a, b) touched by chunks first..last (chunk edges are monotone)
        self.cells = [(a, b, bisect_right(stops, a), bisect_left(starts, b) - 1)
                      for a, b in zip(edges, edges[1:], strict=False)]
        cell_starts = [c[0] for c in self.cells]
        self.chunk_cells = [(bisect_left(cell_starts, c.out_start),
                             bisect_left(cell_starts, c.out_stop)) for c in p.chunks]
        self.settled = bytearray(len(self.cells))  # computed, or never needed
        # chunk -> the pieces of its output still needed, as (track position, samples)
        self.held: dict[int, list[tuple[int, np.ndarray]]] = {}

    def add(self, chunk: Chunk, chunk_out: np.ndarray, final: Intervals
            ) -> list[tuple[int, np.ndarray]]:
        """Take a chunk's (S, C, chunk.length) output; return the (start, region) cells that
        became computable, for samples not in `final` (the track's final intervals)."""
        self.held[chunk.index] = [(chunk.out_start, np.array(chunk_out, np.float32))]
        regions = []
        lo, hi = self.chunk_cells[chunk.index]
        for i in range(lo, hi):
            a, b, first, last = self.cells[i]
            if self.settled[i]:
                continue
            if not needed(a, b, self.length, final):
                self.settled[i] = 1
            elif all(k in self.held for k in range(first, last + 1)):
                regions.append((a, self._cell(a, b, first, last)))
                self.settled[i] = 1
        self._release(self.cells[lo][2], self.cells[hi - 1][3], final)
        return regions

    def _samples(self, k: int, a: int, n: int) -> np.ndarray:
        """Chunk k's output over [a, a + n), from the pieces of it that are kept."""
        for pos, samples in self.held[k]:
            if pos <= a and a + n <= pos + samples.shape[-1]:
                return samples[..., a - pos:a - pos + n]
        raise AssertionError(f"chunk {k} no longer holds [{a}, {a + n})")

    def _cell(self, a: int, b: int, first: int, last: int) -> np.ndarray:
        """demucs's arithmetic over one cell: sum(weight * chunk) / sum(weight), chunk order."""
        n = b - a
        S, C = self.held[first][0][1].shape[:2]
        out = np.zeros((S, C, n), np.float32)
        total = np.zeros(n, np.float32)
        for k in range(first, last + 1):
            w = self.weight[a - self.p.chunks[k].out_start:][:n]
            out += w * self._samples(k, a, n)
            total += w
        return out / total

    def _release(self, first: int, last: int, final: Intervals) -> None:
        """Drop what chunks first..last no longer need: all of a chunk once its cells are
        settled, else everything outside its unsettled cells (kept as separate pieces: an
        island's edge chunk keeps its head and its tail, not what lies between)."""
        for k in range(first, last + 1):
            if k not in self.held:
                continue
            lo, hi = self.chunk_cells[k]
            keep = Intervals((self.cells[i][0], self.cells[i][1]) for i in range(lo, hi)
                             if not self.settled[i]
                             and needed(self.cells[i][0], self.cells[i][1], self.length, final))
            if not keep:
                del self.held[k]
                continue
            pieces = self.held[k]
            if sum(s.shape[-1] for _, s in pieces) > keep.total:
                self.held[k] = [(a, self._samples(k, a, b - a).copy()) for a, b in keep]

    @property
    def held_samples(self) -> int:
        """Samples (per source and channel) kept for later cells (memory tests)."""
        return sum(s.shape[-1] for pieces in self.held.values() for _, s in pieces)


class Combiner:
    """Mixes pass regions into final, de-normalised stems in `sink` (see module docstring)."""

    def __init__(self, passes: Sequence[Pass], shifts: int, weights: np.ndarray,
                 sink: StemBuffers, mean: float, std: float) -> None:
        """The stems in `sink.final` are final already (a resume): regions there are ignored."""
        self.passes = list(passes)
        self.shifts = shifts
        self.weights = weights.astype(np.float32)  # (members, S)
        self.totals = self.weights.sum(axis=0)  # (S,)
        self.sink = sink
        self.length = sink.frames
        self.mean, self.std = np.float32(mean), np.float32(std)
        self.final = sink.final
        self.have = [Intervals() for _ in self.passes]  # per pass: regions held, not final
        self.pieces: list[dict[int, np.ndarray]] = [{} for _ in self.passes]

    def add(self, pass_index: int, start: int, region: np.ndarray) -> None:
        a, b = max(start, 0), min(start + region.shape[-1], self.length)
        if b <= a or self.final.covers(a, b):
            return
        self.pieces[pass_index][a] = region[..., a - start:b - start]
        self.have[pass_index] = self.have[pass_index].add(a, b)

    def finalize(self) -> Intervals:
        """Mix, de-normalise and write wherever every pass has its values; the final set."""
        ready = self.have[0]
        for have in self.have[1:]:
            ready = ready.intersect(have)
        ready = ready.minus(self.final)
        if not ready:
            return self.final
        for a, b in ready:
            self.sink.write(a, self._mix(a, b))
        self.final = self.final.union(ready)
        self._prune()
        return self.final

    def _mix(self, a: int, b: int) -> np.ndarray:
        """demucs's mix of the passes over [a, b): (S, C, b - a) float32, de-normalised."""
        estimate: Any = 0.0  # starts as demucs does: 0. + first member
        for member, w in enumerate(self.weights):
            out: Any = 0.0
            for p in self.passes:
                if p.member == member:
                    out = out + self._gather(p.index, a, b)
            if self.shifts:
                out = out / np.float32(self.shifts)
            estimate = estimate + out * w[:, None, None]
        estimate = estimate / self.totals[:, None, None]
        return estimate * self.std + self.mean

    def _gather(self, pass_index: int, a: int, b: int) -> np.ndarray:
        """Pass `pass_index`'s values over [a, b), from the regions that hold them."""
        parts = []
        for start in sorted(self.pieces[pass_index]):
            piece = self.pieces[pass_index][start]
            lo, hi = max(a, start), min(b, start + piece.shape[-1])
            if lo < hi:
                parts.append(piece[..., lo - start:hi - start])
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)

    def _prune(self) -> None:
        """Forget regions that are final now."""
        for i, pieces in enumerate(self.pieces):
            for start in [s for s, x in pieces.items()
                          if self.final.covers(s, s + x.shape[-1])]:
                del pieces[start]
            self.have[i] = self.have[i].minus(self.final)
