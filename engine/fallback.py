"""Hand-over at run time: when the chosen backend fails, the next passing one carries on.

The calibration orders the candidates that pass a quality gate, fastest first (the reference,
torch fp32 on the CPU, always among them). `Handover` holds that order for one model and the
backends of the candidate in use, one per bag member; each member runs behind a
`FallbackBackend`, which is a plain `Backend` to the separator (its chunk loop is unchanged).
If a prediction raises, the handover builds the next candidate (lazily: only then) and the
same call is run again on it - the same chunk, so nothing of the song is lost or computed
twice, and every chunk still comes from a candidate that passed the gate. All members move
together. The person is told once per hand-over through the notice handler the separator
sets for each job (`Separator.separate(on_notice=...)` -> a `JobEvent("notice")`); a
hand-over that happens while loading is told at the next job.

NB: one separation runs on a model at a time (the CLI's files and the worker's jobs run one
after the other); the lock only guards the hand-over itself against two members' threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.backends import Backend
from engine.candidates import Candidate
from engine.errors import CancelFlag, Cancelled, DemixerError
from engine.shapes import CoreShapes

BuildOne = Callable[[Candidate], list[Backend]]  # one backend per bag member


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class Handover:
    """The ordered candidates of one model and the backends of the one in use."""

    def __init__(self, candidates: Sequence[Candidate], build: BuildOne) -> None:
        if not candidates:
            raise ValueError("a hand-over needs at least one candidate")
        self.candidates = list(candidates)
        self.build = build
        self.index = -1
        self.backends: list[Backend] = []
        self.on_notice: Callable[[str], None] | None = None
        self.pending: list[str] = []  # notices from before a handler was set
        self.lock = threading.Lock()
        self._advance(None)

    @property
    def current(self) -> Candidate:
        return self.candidates[self.index]

    def _advance(self, failure: str | None) -> None:
        """Move to the next candidate that builds (`failure`: why the current one stopped,
        None while loading); raise a `DemixerError` if none is left."""
        failed = None if self.index < 0 else self.current
        where = " from the same chunk" if failure is not None else ""
        while self.index + 1 < len(self.candidates):
            self.index += 1
            try:
                self.backends = self.build(self.current)
            except Cancelled:
                raise
            except Exception as exc:  # it cannot even load: say so, try the next one
                failed, failure = failed or self.current, failure or _describe(exc)
                continue
            if failed is not None:
                self._notice(f"The {failed.label} backend failed ({failure}); continuing "
                             f"with {self.current.label}{where}.")
            return
        label = failed.label if failed is not None else "chosen"
        raise DemixerError(f"The {label} backend failed ({failure}) and no other backend "
                           f"that passed the calibration is left to carry on.")

    def _notice(self, text: str) -> None:
        if self.on_notice is None:
            self.pending.append(text)
        else:
            self.on_notice(text)

    def set_notice_handler(self, handler: Callable[[str], None] | None) -> None:
        with self.lock:
            self.on_notice = handler
            if handler is not None:
                for text in self.pending:
                    handler(text)
                self.pending.clear()

    def fail(self, index: int, exc: Exception) -> None:
        """Candidate `index` raised `exc`: move on, unless another member did already."""
        with self.lock:
            if index == self.index:
                self._advance(_describe(exc))


class FallbackBackend:
    """Member `member` of a model, on whichever candidate the `Handover` uses now.

    `name` and `max_batch` follow the backend in use (refreshed at each call: after a
    hand-over the separator's next batch takes the new size)."""

    def __init__(self, handover: Handover, member: int) -> None:
        self.handover = handover
        self.member = member
        self.shapes: CoreShapes = self._backend.shapes
        self.name = ""
        self.max_batch = 1
        self._sync()

    @property
    def _backend(self) -> Backend:
        return self.handover.backends[self.member]

    def _sync(self) -> None:
        self.name = self._backend.name
        self.max_batch = self._backend.max_batch

    @property
    def candidate(self) -> Candidate:
        return self.handover.current

    @property
    def host_bound(self) -> bool:
        return self._backend.host_bound

    def set_notice_handler(self, handler: Callable[[str], None] | None) -> None:
        self.handover.set_notice_handler(handler)

    def predict(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        while True:
            self._sync()
            index, backend = self.handover.index, self._backend
            try:
                return backend.predict(spec, wave)
            except Exception as exc:  # any failure: the next candidate redoes this chunk
                self.handover.fail(index, exc)


def fallback_backends(candidates: Sequence[Candidate], bag: Any, resolved: Any,
                      progress: Callable[[Any], None] | None = None,
                      cancel: CancelFlag | None = None) -> list[FallbackBackend]:
    """One `FallbackBackend` per member of the model `resolved` (one checkpoint each), over
    `candidates` (fastest first). `bag` may be a `pipeline.LazyBag`: counting the members
    does not load it."""
    handover = Handover(candidates, lambda c: c.build(bag, resolved, progress, cancel))
    return [FallbackBackend(handover, m) for m in range(len(resolved.checkpoints))]
