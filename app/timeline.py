"""The shared time axis of the track view: what frames the lanes show, the playhead, zoom."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from engine.intervals import Intervals

MIN_FRAMES_PER_PX = 16.0  # deepest zoom: 0.36 ms a pixel at 44.1 kHz


class Timeline(QObject):
    viewChanged = Signal()
    playheadChanged = Signal()
    readyChanged = Signal()
    seekRequested = Signal(int)  # a frame the user clicked or dragged to
    loopChanged = Signal()
    loopRequested = Signal(int, int)  # A and B frames dragged on the ruler (any order)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.frames = 0
        self.samplerate = 44100
        self.start = 0.0  # frame at the left edge
        self.frames_per_px = 1024.0
        self.width = 1
        self.playhead = 0
        self.ready = 0  # the prefix of `final`
        self.final = Intervals()  # where the stems are separated (drawn; out of order)
        self.loop: tuple[int, int] | None = None  # the A–B loop shown, frames
        self._fitted = True

    def reset(self, frames: int, samplerate: int) -> None:
        self.frames, self.samplerate = frames, samplerate
        self.playhead, self.ready, self._fitted = 0, 0, True
        self.final = Intervals()
        self.set_loop(None)
        self.fit()

    def set_loop(self, loop: tuple[int, int] | None) -> None:
        if loop != self.loop:
            self.loop = loop
            self.loopChanged.emit()

    @property
    def max_frames_per_px(self) -> float:
        return max(MIN_FRAMES_PER_PX, self.frames / max(1, self.width))

    @property
    def visible_frames(self) -> float:
        return self.width * self.frames_per_px

    def set_width(self, width: int) -> None:
        if width == self.width or width <= 0:
            return
        self.width = width
        if self._fitted:
            self.fit()
        else:
            self._set_view(self.start, self.frames_per_px)

    def fit(self) -> None:
        self._fitted = True
        self._set_view(0.0, self.max_frames_per_px)

    def zoom(self, factor: float, anchor_px: float | None = None) -> None:
        """Zoom in (factor > 1) or out around pixel `anchor_px` (default: the playhead if
        visible, else the centre), keeping the frame under it in place."""
        if anchor_px is None:
            x = self.x_of(self.playhead)
            anchor_px = x if 0 <= x <= self.width else self.width / 2
        anchor = self.start + anchor_px * self.frames_per_px
        fpp = min(self.max_frames_per_px, max(MIN_FRAMES_PER_PX, self.frames_per_px / factor))
        self._fitted = fpp >= self.max_frames_per_px
        self._set_view(anchor - anchor_px * fpp, fpp)

    def scroll_to(self, start: float) -> None:
        self._set_view(start, self.frames_per_px)

    def scroll_by_px(self, px: float) -> None:
        self._set_view(self.start + px * self.frames_per_px, self.frames_per_px)

    def _set_view(self, start: float, fpp: float) -> None:
        fpp = min(self.max_frames_per_px, max(MIN_FRAMES_PER_PX, fpp))
        start = max(0.0, min(start, self.frames - self.width * fpp))
        if (start, fpp) != (self.start, self.frames_per_px):
            self.start, self.frames_per_px = start, fpp
            self.viewChanged.emit()

    def frame_at(self, x: float) -> int:
        return int(max(0, min(self.frames, round(self.start + x * self.frames_per_px))))

    def x_of(self, frame: float) -> float:
        return (frame - self.start) / self.frames_per_px

    def set_playhead(self, frame: int, follow: bool = False) -> None:
        if frame == self.playhead:
            return
        self.playhead = frame
        if follow and not self._fitted:
            x = self.x_of(frame)
            if x < 0 or x > self.width * 0.95:  # page along, as DAWs do
                self.scroll_to(frame - self.visible_frames * 0.05)
        self.playheadChanged.emit()

    def set_ready(self, frame: int) -> None:
        self.set_final(Intervals.upto(frame))

    def set_final(self, final: Intervals) -> None:
        if final != self.final:
            self.final, self.ready = final, final.prefix
            self.readyChanged.emit()

    def seconds(self, frame: float) -> float:
        return frame / max(1, self.samplerate)


def format_time(seconds: float, tenths: bool = True) -> str:
    seconds = max(0.0, seconds)
    minutes, rest = divmod(seconds, 60)
    if tenths:
        return f"{int(minutes)}:{rest:04.1f}"
    return f"{int(minutes)}:{int(rest):02d}"
