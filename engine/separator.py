"""The streaming separator: chunks -> STFT -> backend -> iSTFT + time branch -> overlap-add.

`Separator` holds a loaded model (a demucs `BagOfModels`, one backend per member) and the
separation options; `separate(track, sink, ...)` runs every chunk of every pass, in an order
that keeps the passes in step, and writes final stems into `sink` region by region, raising
`sink.ready_frames` as it goes. It runs on the caller's thread; `engine.job` puts it on a worker.

Normalisation is demucs's (`demucs.api.Separator.separate_tensor`): the model sees
(track - mean) / (std + 1e-8) of the mono mix, and the stems are scaled back.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine import stft
from engine.backends import Backend
from engine.chunking import Chunk, Pass, draw_shift_offsets, plan, triangle_weight
from engine.errors import CancelFlag, DemixerError, check_cancel
from engine.overlap_add import Combiner, PassAccumulator
from engine.shapes import CoreShapes
from engine.stembuffers import StemBuffers, read_track_window

FFT_WORKERS = max(1, min(4, os.cpu_count() or 1))  # scipy.fft threads for STFT / iSTFT


@dataclass(frozen=True)
class SeparationOptions:
    shifts: int = 1  # demucs's default: one random offset of up to 0.5 s
    overlap: float = 0.25
    segment: float | None = None  # seconds; None = the model's training length
    seed: int | None = None  # for the shift offsets
    shift_offsets: tuple[int, ...] | None = None  # explicit offsets (shifts * members)
    batch: int | None = None  # chunks per backend call; None = the backend's choice


@dataclass(frozen=True)
class Progress:
    chunks_done: int
    chunks_total: int
    ready_frames: int
    elapsed_s: float
    chunks_resumed: int = 0  # of chunks_done, those finished by an earlier, interrupted run

    @property
    def fraction(self) -> float:
        return self.chunks_done / max(1, self.chunks_total)

    @property
    def eta_s(self) -> float | None:
        ran = self.chunks_done - self.chunks_resumed
        if ran <= 0:
            return None
        return self.elapsed_s / ran * (self.chunks_total - self.chunks_done)


class Separator:
    def __init__(self, weights: Sequence[Sequence[float]], backends: Sequence[Backend],
                 options: SeparationOptions = SeparationOptions()) -> None:
        self.backends = list(backends)
        self.shapes: CoreShapes = self.backends[0].shapes
        self.weights = np.asarray(weights, np.float64)
        self.options = options
        self.segment = self._segment_samples()
        self.max_shift = int(0.5 * self.shapes.samplerate)
        if options.shifts < 0 or not 0 <= options.overlap < 1:
            raise DemixerError("--shifts must be >= 0 and --overlap between 0 and 1.")
        self.model_id: str | None = None  # engine.pipeline: the name and checkpoint SHA-256s
        self._weights_digest: str | None = None

    def identity(self) -> dict[str, Any]:
        """What decides the stems' bits besides the input and the options: the model and how
        each member runs. A resumed run must match it, or it would not be bit-identical."""
        return {"model": self.model_id or self._model_digest(),
                "bag_weights": self.weights.tolist(), "segment": self.segment,
                "backends": [_backend_identity(b) for b in self.backends]}

    def _model_digest(self) -> str:
        """SHA-256 of the members' parameters (for separators not built from checkpoints)."""
        if self._weights_digest is None:
            sha = hashlib.sha256()
            for backend in self.backends:
                core = getattr(backend, "core", None)
                torch = sys.modules.get("torch")  # not imported here: exported runtimes run
                if torch is None or not isinstance(core, torch.nn.Module):  # without it
                    sha.update(f"{type(backend).__name__}@{id(backend)}".encode())
                    continue
                for name, tensor in core.state_dict().items():
                    sha.update(name.encode())
                    sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._weights_digest = sha.hexdigest()
        return self._weights_digest

    @property
    def sources(self) -> list[str]:
        return list(self.shapes.sources)

    @property
    def samplerate(self) -> int:
        return self.shapes.samplerate

    def _segment_samples(self) -> int:
        train = self.shapes.segment_samples
        if self.options.segment is None:
            return train
        seg = int(self.options.segment * self.shapes.samplerate)
        if seg > train or seg < self.shapes.nfft:
            limit = train / self.shapes.samplerate
            raise DemixerError(f"--segment must be between 0.1 and {limit:.2f} seconds for "
                               "this model (it cannot see more than it was trained on).")
        return seg

    def draw_offsets(self) -> tuple[int, ...] | None:
        """The shift offsets of one run (shifts x members, member by member), None without
        shifts: the options' explicit offsets, else drawn from their seed (random if None).
        A resumable run records them, since a resume must use the same ones."""
        o = self.options
        members = len(self.backends)
        if not o.shifts:
            return None
        offsets = tuple(o.shift_offsets) if o.shift_offsets is not None else tuple(
            draw_shift_offsets(o.shifts, members, self.max_shift, o.seed))
        if len(offsets) != o.shifts * members:
            raise DemixerError(f"--shift-offsets needs {o.shifts * members} values "
                               f"({o.shifts} shifts x {members} models).")
        return offsets

    def plan(self, length: int, offsets: Sequence[int] | None = None) -> list[Pass]:
        """Every pass's chunks for a track of `length` samples; `offsets` as `draw_offsets`
        returns them (None: drawn now, per the options)."""
        o = self.options
        if offsets is None:
            offsets = self.draw_offsets()
        return plan(length, self.segment, o.overlap, len(self.backends), o.shifts,
                    self.max_shift, None if offsets is None else list(offsets))

    def batch_size(self, member: int) -> int:
        return self.options.batch or self.backends[member].max_batch

    def resume_chunks(self, passes: Sequence[Pass], ready: int) -> list[int]:
        """Per pass, the chunk to start at when the stems are final below `ready`.

        A sample x >= ready gets contributions only from chunks that end after x, so a pass
        restarts at its first chunk that ends after `ready` (chunks end in order), rounded down
        to a whole batch: the network then sees the very batches of an uninterrupted run, and
        a batched backend's arithmetic cannot differ. Chunks before `ready` only add to samples
        that are final already (the accumulators' sums for those come out incomplete, and the
        combiner drops them)."""
        starts = []
        for p in passes:
            first = next((c.index for c in p.chunks if c.out_stop > ready), len(p.chunks))
            size = self.batch_size(p.member)
            starts.append(first if first == len(p.chunks) else first // size * size)
        return starts

    def separate(self, audio: np.ndarray, mean: float, std: float, sink: StemBuffers,
                 cancel: CancelFlag | None = None,
                 on_progress: Callable[[Progress], None] | None = None,
                 offsets: Sequence[int] | None = None,
                 on_notice: Callable[[str], None] | None = None) -> None:
        """Separate the (C, N) track `audio` (model rate) into `sink`, streaming.

        Resumes where `sink` says the stems are final (`sink.ready_frames`, 0 for a fresh
        sink): with the same audio, mean, std and shift `offsets` (see `draw_offsets`; None
        draws them per the options) the stems come out bit for bit as in one uninterrupted
        run (tests/engine/test_resume.py); see `resume_chunks` for why. `on_notice` gets one
        sentence when something the person should know happens on the way (a backend that
        failed and was handed over, `engine.fallback`).

        The post stage (iSTFT, overlap-add, mixing, writing, progress) runs on this thread
        after each network call when the backend computes on the CPU: on a 2-core machine a
        post thread running beside torch's threads stalls them by more than it saves (60 s of
        audio: 31.5 s overlapped, 29.0 s in turn). When the network runs elsewhere (the ANE
        or a GPU), one post thread finishes the previous chunk while the next one computes.
        It takes chunks strictly in order, so the stems are bit for bit those of a sequential
        run; at most one finished chunk waits for it. Until the first region is final, though,
        latency beats throughput: the listener is waiting for it, so its post stage runs here.
        """
        passes = self.plan(audio.shape[-1], offsets)
        self._set_notice_handler(on_notice)
        try:
            self._run(passes, audio, (mean, std), sink, cancel, on_progress)
        finally:
            self._set_notice_handler(None)  # the next job brings its own

    def _run(self, passes: list[Pass], audio: np.ndarray, stats: tuple[float, float],
             sink: StemBuffers, cancel: CancelFlag | None,
             on_progress: Callable[[Progress], None] | None) -> None:
        """The chunk loop of `separate`, from where `sink` says the stems are final."""
        mean, std = stats
        starts = self.resume_chunks(passes, sink.ready_frames)
        finisher = _Finisher(self, passes, sink, mean, std, on_progress, starts)
        cursor = _Cursor(passes, starts)
        scale = (np.float32(mean), np.float32(std + 1e-8))
        overlap_post = not any(b.host_bound for b in self.backends)
        with ThreadPoolExecutor(1, thread_name_prefix="demixer-post") as post:
            pending: Future[None] | None = None
            while not cursor.done:
                check_cancel(cancel)
                backend, batch = self._next_batch(cursor)
                raw = self._predict(backend, batch, audio, scale)
                if pending is not None:
                    pending.result()  # re-raises a post-stage error here
                check_cancel(cancel)  # the chunk just finished may have been the one that cancelled
                if not overlap_post or finisher.first_region:
                    finisher.finish(batch, raw)  # (nothing is pending: all so far ran here)
                else:
                    pending = post.submit(finisher.finish, batch, raw)
            if pending is not None:
                pending.result()

    def _set_notice_handler(self, on_notice: Callable[[str], None] | None) -> None:
        """Hand `on_notice` to the backends that report things (`engine.fallback`)."""
        for backend in self.backends:
            setter = getattr(backend, "set_notice_handler", None)
            if setter is not None:
                setter(on_notice)

    def _next_batch(self, cursor: _Cursor) -> tuple[Backend, list[Chunk]]:
        """Chunks of the pass furthest behind (keeps passes in step, so buffers stay small)."""
        lead = cursor.lead()
        backend = self.backends[lead.member]
        return backend, cursor.take(lead, self.options.batch or backend.max_batch)

    def _predict(self, backend: Backend, chunks: list[Chunk], audio: np.ndarray,
                 scale: tuple[np.float32, np.float32]) -> tuple[np.ndarray, np.ndarray]:
        """Normalised windows -> STFT -> the backend's raw (spec_out, time_out)."""
        mean, std = scale
        train = self.shapes.segment_samples
        wave = np.zeros((len(chunks), self.shapes.channels, train), np.float32)
        for i, c in enumerate(chunks):
            window = read_track_window(audio, c.src_start, self.segment)
            # demucs normalises the whole track, then pads: padding is zero *after* scaling
            inside = slice(max(0, -c.src_start), min(self.segment, audio.shape[-1] - c.src_start))
            window[:, inside] = (window[:, inside] - mean) / std
            wave[i, :, :self.segment] = window
        spec = stft.to_cac(stft.spec(wave, self.shapes.nfft, workers=FFT_WORKERS))
        return backend.predict(spec, wave)

    def _to_audio(self, chunks: list[Chunk], raw: tuple[np.ndarray, np.ndarray]
                  ) -> list[np.ndarray]:
        """iSTFT + time branch, trimmed: (S, C, chunk.length) for each chunk."""
        spec_out, time_out = raw
        y = stft.ispec_cac(spec_out, self.shapes.segment_samples, workers=FFT_WORKERS)
        y = time_out + y
        return [y[i, ..., c.trim:c.trim + c.length] for i, c in enumerate(chunks)]

    def _run_batch(self, backend: Backend, chunks: list[Chunk], audio: np.ndarray,
                   scale: tuple[np.float32, np.float32]) -> list[np.ndarray]:
        """Model outputs (S, C, chunk.length) for each chunk (all of one model)."""
        return self._to_audio(chunks, self._predict(backend, chunks, audio, scale))

    def first_chunk(self, backend: Backend, audio: np.ndarray, mean: float,
                    std: float) -> np.ndarray:
        """The stems of the first chunk of the (C, N) track `audio` through `backend` alone,
        de-normalised: float32 (S, C, n), exactly as `separate` computes that chunk (the
        calibration compares backends on this)."""
        chunk = self.plan(audio.shape[-1])[0].chunks[0]
        scale = (np.float32(mean), np.float32(std + 1e-8))
        [out] = self._run_batch(backend, [chunk], audio, scale)
        return out * scale[1] + scale[0]


def _backend_identity(backend: Backend) -> dict[str, Any]:
    """A backend's settings that change its arithmetic (torch's thread count can change the
    order of its sums)."""
    return {"name": backend.name, "precision": getattr(backend, "precision", None),
            "device": str(getattr(backend, "device", "")), "batch": backend.max_batch,
            "threads": _threads(backend)}


def _threads(backend: Backend) -> int | None:
    """The CPU threads of a host-bound backend: its own setting, else torch's (torch is not
    imported for it: a cached OpenVINO start runs without torch)."""
    if not backend.host_bound:
        return None
    own = getattr(backend, "threads", None)
    if own is not None:
        return int(own)
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


class _Cursor:
    """Which chunks run next: always the pass whose next chunk starts earliest."""

    def __init__(self, passes: Sequence[Pass], starts: Sequence[int]) -> None:
        self.passes = list(passes)
        self.next = list(starts)

    @property
    def done(self) -> bool:
        return all(n == len(p.chunks) for n, p in zip(self.next, self.passes, strict=True))

    def lead(self) -> Pass:
        live = [p for p in self.passes if self.next[p.index] < len(p.chunks)]
        return min(live, key=lambda p: (p.chunks[self.next[p.index]].out_start, p.index))

    def take(self, p: Pass, size: int) -> list[Chunk]:
        k = self.next[p.index]
        chunks = list(p.chunks[k:k + size])
        self.next[p.index] += len(chunks)
        return chunks


class _Finisher:
    """The post stage: overlap-add, mix passes, write final regions, report progress."""

    def __init__(self, sep: Separator, passes: Sequence[Pass], sink: StemBuffers, mean: float,
                 std: float, on_progress: Callable[[Progress], None] | None,
                 starts: Sequence[int]) -> None:
        self.sep = sep
        self.sink = sink
        weight = triangle_weight(sep.segment)
        self.accs = [PassAccumulator(p, len(sep.sources), sep.shapes.channels, sep.segment,
                                     weight, first) for p, first in zip(passes, starts,
                                                                        strict=True)]
        # A batch of b chunks moves its pass's frontier up to b strides past the final mark
        # (the cursor always advances the pass furthest behind), so b segments always hold it.
        batch = max(sep.batch_size(m) for m in range(len(sep.backends)))
        self.combiner = Combiner(passes, sep.options.shifts, sep.weights, sink,
                                 capacity=sep.segment * batch, mean=mean, std=std + 1e-8,
                                 finalized=sink.ready_frames)
        self.on_progress = on_progress
        self.total = sum(len(p.chunks) for p in passes)
        self.resumed = self.done = sum(starts)
        self.resumed_at = sink.ready_frames
        self.t0 = time.monotonic()

    @property
    def first_region(self) -> bool:
        """True until this run has made a region final (the listener is waiting for it)."""
        return self.sink.ready_frames == self.resumed_at

    def finish(self, chunks: list[Chunk], raw: tuple[np.ndarray, np.ndarray]) -> None:
        for chunk, out in zip(chunks, self.sep._to_audio(chunks, raw), strict=True):
            start, region = self.accs[chunk.pass_index].add(chunk, out)
            self.combiner.add(chunk.pass_index, start, region)
        self.sink.set_ready(self.combiner.finalize(min(a.frontier for a in self.accs)))
        self.done += len(chunks)
        if self.on_progress is not None:
            self.on_progress(Progress(self.done, self.total, self.sink.ready_frames,
                                      time.monotonic() - self.t0, self.resumed))
