"""Chunk planning: where each model call reads and writes, exactly as `demucs.apply.apply_model`.

All positions are in track samples at the model rate. A *pass* is one run over the track: with
`shifts=0` there is one pass over the track itself; with shifts, demucs pads the track with
`max_shift` zeros on both sides and runs one pass per random offset `o` over the virtual signal
that starts at track position `o - max_shift`. Each pass is cut into segments of `segment`
samples every `stride = int((1 - overlap) * segment)`; a chunk shorter than a segment (the last
one, or a short track) is centred in a segment-long window whose other samples come from the
neighbouring audio, or are zeros outside the track. The model's output window is trimmed back
to the chunk and overlap-added with triangular weights.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunk:
    pass_index: int
    index: int  # within its pass
    out_start: int  # track position of the chunk's first output sample (< 0 in shifted passes)
    length: int  # output samples, <= segment
    src_start: int  # track position of the model window's first sample
    trim: int  # offset of the chunk's output inside the model window

    @property
    def out_stop(self) -> int:
        return self.out_start + self.length


@dataclass(frozen=True)
class Pass:
    index: int
    member: int  # which model of the bag
    base: int  # track position of the pass's virtual signal start (0, or offset - max_shift)
    length: int  # samples of the virtual signal
    chunks: tuple[Chunk, ...]

    @property
    def stop(self) -> int:
        return self.base + self.length


def stride_for(segment: int, overlap: float) -> int:
    return int((1 - overlap) * segment)


def triangle_weight(segment: int) -> np.ndarray:
    """demucs's chunk weight: 1..peak..1 normalised to a maximum of 1, float32."""
    half = segment // 2
    w = np.concatenate([np.arange(1, half + 1), np.arange(segment - half, 0, -1)])
    return (w / w.max()).astype(np.float32)


def _plan_pass(index: int, member: int, base: int, length: int, segment: int,
               stride: int) -> Pass:
    chunks = []
    for k, offset in enumerate(range(0, length, stride)):
        n = min(length - offset, segment)
        delta = segment - n
        start = base + offset
        chunks.append(Chunk(pass_index=index, index=k, out_start=start, length=n,
                            src_start=start - delta // 2, trim=delta // 2))
    return Pass(index=index, member=member, base=base, length=length, chunks=tuple(chunks))


def draw_shift_offsets(shifts: int, members: int, max_shift: int, seed: int | None) -> list[int]:
    """Random offsets in demucs's order (member by member), from `random.Random(seed)`.

    demucs draws them with the global `random.randint(0, max_shift)`; the same seed given to
    `random.seed` reproduces demucs's offsets.
    """
    rng = random.Random(seed)
    return [rng.randint(0, max_shift) for _ in range(shifts * members)]


def plan(length: int, segment: int, overlap: float, members: int = 1, shifts: int = 0,
         max_shift: int = 0, offsets: list[int] | None = None) -> list[Pass]:
    """All passes for a track of `length` samples; `offsets` has shifts*members entries."""
    if length <= 0:
        raise ValueError("cannot plan an empty track")
    stride = stride_for(segment, overlap)
    if stride <= 0:
        raise ValueError(f"overlap {overlap} leaves no stride")
    passes: list[Pass] = []
    for member in range(members):
        if shifts == 0:
            passes.append(_plan_pass(len(passes), member, 0, length, segment, stride))
            continue
        assert offsets is not None and len(offsets) == shifts * members
        for o in offsets[member * shifts:(member + 1) * shifts]:
            if not 0 <= o <= max_shift:
                raise ValueError(f"shift offset {o} outside 0..{max_shift}")
            passes.append(_plan_pass(len(passes), member, o - max_shift,
                                     length + max_shift - o, segment, stride))
    return passes
