"""The streaming separator: chunks -> STFT -> backend -> iSTFT + time branch -> overlap-add.

`Separator` holds a loaded model (a demucs `BagOfModels`, one backend per member) and the
separation options; `separate(track, sink, ...)` runs every chunk of every pass, in an order
that keeps the passes in step, and writes final stems into `sink` region by region, growing
`sink.final` (a set of intervals) as it goes. It runs on the caller's thread; `engine.job`
puts it on a worker.

Seek first. The order follows a `Focus` (the listener's playhead, moved from any thread):
between network calls the separator takes the batch around the focus first, keeps going
forward from there, and fills the skipped part last. Chunks then finish out of order; the
overlap-add and the mix of passes (`engine.overlap_add`) do not depend on that order, so the
stems are bit for bit those of an in-order run.

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
from engine.intervals import Intervals
from engine.overlap_add import Combiner, PassAssembler
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
    ready_frames: int  # the stems are final on [0, ready_frames) (the prefix of `final`)
    elapsed_s: float
    chunks_resumed: int = 0  # of chunks_done, those finished by an earlier, interrupted run
    final: Intervals = Intervals()  # where the stems are final

    @property
    def fraction(self) -> float:
        return self.chunks_done / max(1, self.chunks_total)

    @property
    def eta_s(self) -> float | None:
        ran = self.chunks_done - self.chunks_resumed
        if ran <= 0:
            return None
        return self.elapsed_s / ran * (self.chunks_total - self.chunks_done)


class Focus:
    """Where the listener is: the separator works on the chunks around `frame` first.

    NB: threads. `frame` is one int (or None: the first frame not final when the run began),
    assigned by any thread and read by the separator's thread between network calls."""

    def __init__(self, frame: int | None = None) -> None:
        self.frame = frame


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

    def units(self, passes: Sequence[Pass], final: Intervals, length: int) -> list[Unit]:
        """The batches still to run when the stems are final on `final`: every whole batch
        (chunks [k * size, (k + 1) * size) of a pass, as an in-order run batches them) with a
        chunk that touches a frame not final yet.

        Whole batches: the network then sees the very batches of an in-order run, so a batched
        backend's arithmetic cannot differ. A frame outside `final` gets contributions only
        from chunks that touch it, all of which run again; chunks also touching final frames
        only add to samples that are final already (`engine.overlap_add` drops those)."""
        todo = []
        for p in passes:
            size = self.batch_size(p.member)
            for k in range(0, len(p.chunks), size):
                chunks = p.chunks[k:k + size]
                if any(not final.covers(max(0, c.out_start), min(length, c.out_stop))
                       for c in chunks):
                    todo.append(Unit(p.index, chunks))
        return todo

    def resume_chunks(self, passes: Sequence[Pass], ready: int) -> list[int]:
        """Per pass, the chunk an in-order resume starts at when the stems are final below
        `ready` (its first chunk that ends after `ready`, rounded down to a whole batch)."""
        length = max(p.stop for p in passes)
        first = {u.pass_index: u.chunks[0].index
                 for u in reversed(self.units(passes, Intervals.upto(ready), length))}
        return [first.get(p.index, len(p.chunks)) for p in passes]

    def separate(self, audio: np.ndarray, mean: float, std: float, sink: StemBuffers,
                 cancel: CancelFlag | None = None,
                 on_progress: Callable[[Progress], None] | None = None,
                 offsets: Sequence[int] | None = None,
                 on_notice: Callable[[str], None] | None = None,
                 focus: Focus | None = None) -> None:
        """Separate the (C, N) track `audio` (model rate) into `sink`, streaming.

        Runs only what `sink.final` does not hold yet (nothing for a fresh sink): with the
        same audio, mean, std and shift `offsets` (see `draw_offsets`; None draws them per
        the options) the stems come out bit for bit as in one uninterrupted run
        (tests/engine/test_resume.py); see `units` for why. `focus` says where to work first
        (see the module docstring; None: from the first frame not final, in order).
        `on_notice` gets one sentence when something the person should know happens on the
        way (a backend that failed and was handed over, `engine.fallback`).

        The post stage (iSTFT, overlap-add, mixing, writing, progress) runs on this thread
        after each network call when the backend computes on the CPU: on a 2-core machine a
        post thread running beside torch's threads stalls them by more than it saves (60 s of
        audio: 31.5 s overlapped, 29.0 s in turn). When the network runs elsewhere (the ANE
        or a GPU), one post thread finishes the previous chunk while the next one computes.
        It takes batches in the order they were computed; at most one finished batch waits for
        it. While the frame at the focus is not final, though, latency beats throughput: the
        listener is waiting for it, so its post stage runs here.
        """
        passes = self.plan(audio.shape[-1], offsets)
        self._set_notice_handler(on_notice)
        try:
            self._run(passes, audio, (mean, std), sink, cancel, on_progress, focus or Focus())
        finally:
            self._set_notice_handler(None)  # the next job brings its own

    def _run(self, passes: list[Pass], audio: np.ndarray, stats: tuple[float, float],
             sink: StemBuffers, cancel: CancelFlag | None,
             on_progress: Callable[[Progress], None] | None, focus: Focus) -> None:
        """The chunk loop of `separate`, over what `sink` does not hold yet."""
        mean, std = stats
        length = audio.shape[-1]
        cursor = _Cursor(self.units(passes, sink.final, length), sink.final, length, focus)
        finisher = _Finisher(self, passes, sink, (mean, std), on_progress,
                             cursor.todo_chunks)
        scale = (np.float32(mean), np.float32(std + 1e-8))
        overlap_post = not any(b.host_bound for b in self.backends)
        with ThreadPoolExecutor(1, thread_name_prefix="demixer-post") as post:
            pending: Future[None] | None = None
            while not cursor.done:
                check_cancel(cancel)
                unit = cursor.take()
                batch = list(unit.chunks)
                backend = self.backends[passes[unit.pass_index].member]
                raw = self._predict(backend, batch, audio, scale)
                if pending is not None:
                    pending.result()  # re-raises a post-stage error here
                check_cancel(cancel)  # the chunk just finished may have been the one that cancelled
                if not overlap_post or finisher.awaited(cursor.focus_frame()):
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


@dataclass(frozen=True)
class Unit:
    """One batch of one pass: the chunks one network call takes."""

    pass_index: int
    chunks: tuple[Chunk, ...]

    @property
    def start(self) -> int:
        return self.chunks[0].out_start

    @property
    def stop(self) -> int:
        return self.chunks[-1].out_stop


class _Cursor:
    """Which batch runs next: of those that reach past the focus, the one that starts
    earliest (so the playhead's region first, then on from there, the passes in step, which
    keeps the buffers small); once nothing is left past the focus, the earliest of the rest
    (the skipped part)."""

    def __init__(self, todo: Sequence[Unit], final: Intervals, length: int,
                 focus: Focus) -> None:
        self.todo = sorted(todo, key=lambda u: (u.start, u.pass_index))
        self.focus = focus
        self.length = length
        gaps = final.gaps(0, length)
        self.default_focus = gaps.spans[0][0] if gaps else 0
        self.todo_chunks = sum(len(u.chunks) for u in todo)

    @property
    def done(self) -> bool:
        return not self.todo

    def focus_frame(self) -> int:
        frame = self.focus.frame
        return self.default_focus if frame is None else max(0, min(int(frame), self.length - 1))

    def take(self) -> Unit:
        f = self.focus_frame()
        i = next((i for i, u in enumerate(self.todo) if u.stop > f), 0)
        return self.todo.pop(i)


class _Finisher:
    """The post stage: overlap-add, mix passes, write final regions, report progress."""

    def __init__(self, sep: Separator, passes: Sequence[Pass], sink: StemBuffers,
                 stats: tuple[float, float], on_progress: Callable[[Progress], None] | None,
                 todo_chunks: int) -> None:
        self.sep = sep
        self.sink = sink
        mean, std = stats
        weight = triangle_weight(sep.segment)
        self.assemblers = [PassAssembler(p, weight, sink.frames) for p in passes]
        self.combiner = Combiner(passes, sep.options.shifts, sep.weights, sink, mean=mean,
                                 std=std + 1e-8)
        self.on_progress = on_progress
        self.total = sum(len(p.chunks) for p in passes)
        self.resumed = self.done = self.total - todo_chunks
        self.t0 = time.monotonic()

    def awaited(self, frame: int) -> bool:
        """Whether the listener waits for `frame` (not final yet)."""
        return not self.sink.final.contains(frame)

    def finish(self, chunks: list[Chunk], raw: tuple[np.ndarray, np.ndarray]) -> None:
        for chunk, out in zip(chunks, self.sep._to_audio(chunks, raw), strict=True):
            assembler = self.assemblers[chunk.pass_index]
            for start, region in assembler.add(chunk, out, self.combiner.final):
                self.combiner.add(chunk.pass_index, start, region)
        final = self.combiner.finalize()
        self.sink.final = final  # NB: published (written above) before anyone is told
        self.done += len(chunks)
        if self.on_progress is not None:  # the listener hears of it before any fsync
            self.on_progress(Progress(self.done, self.total, final.prefix,
                                      time.monotonic() - self.t0, self.resumed, final))
        self.sink.set_final(final)  # checkpoints when one is due
