"""Waveform lanes and the time ruler, drawn with QPainter from precomputed peaks.

A lane's waveform is rasterised with numpy into a QImage (one vectorised pass over at most
`width` columns from `app.peaks`), cached until the view, size, ready region or colour
changes; a repaint for the moving playhead only blits it and draws a line.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import (
    QBrush,
    QColor,
    QImage,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPalette,
    QPen,
    QPolygonF,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.peaks import Peaks
from app.timeline import Timeline, format_time

LOOP_COLOUR = "#3a9ad9"
DRAG_PX = 4  # a press that moves further than this on the ruler draws a loop
EDGE_PX = 6  # pressing this near an A or B flag drags that edge
TICK_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600)


def is_dark(palette: QPalette) -> bool:
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def _argb(colour: QColor) -> int:
    """Premultiplied ARGB32 of `colour`, as QImage.Format_ARGB32_Premultiplied stores it."""
    a = colour.alpha()
    r, g, b = (round(c * a / 255) for c in (colour.red(), colour.green(), colour.blue()))
    return (a << 24) | (r << 16) | (g << 8) | b


DB_FLOOR = -60.0  # the decibel scale's bottom: quieter than this draws as silence


def decibel_scale(values: np.ndarray) -> np.ndarray:
    """Map samples in -1..1 to -1..1 on a decibel scale (DB_FLOOR..0 dBFS, sign kept), so
    quiet stems show their shape; monotonic, so min/max peaks map to min/max."""
    level = 20 * np.log10(np.maximum(np.abs(values), 1e-12))
    return np.sign(values) * np.clip(1 - level / DB_FLOOR, 0, 1)


def rasterise(lo: np.ndarray, hi: np.ndarray, width: int, height: int,
              colour: QColor, decibels: bool = False) -> QImage:
    """An image with one vertical min..max bar per column (values in -1..1, clipped)."""
    if decibels:
        lo, hi = decibel_scale(lo), decibel_scale(hi)
    img = np.zeros((height, width), np.uint32)
    n = min(width, len(lo))
    if n and height > 2:
        mid, amp = (height - 1) / 2.0, (height - 2) / 2.0
        top = np.clip(np.floor(mid - np.clip(hi[:n], -1, 1) * amp), 0, height - 1)
        bottom = np.clip(np.ceil(mid - np.clip(lo[:n], -1, 1) * amp), 0, height - 1)
        rows = np.arange(height, dtype=np.float64)[:, None]
        img[:, :n][(rows >= top) & (rows <= bottom)] = _argb(colour)
    image = QImage(img.data, width, height, width * 4, QImage.Format.Format_ARGB32_Premultiplied)
    return image.copy()  # detach from the numpy buffer


class _TimeWidget(QWidget):
    """Common mouse handling: click/drag seeks, ⌘/Ctrl-wheel zooms, wheel scrolls."""

    def __init__(self, timeline: Timeline, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.timeline = timeline
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        timeline.viewChanged.connect(self.update)
        timeline.playheadChanged.connect(self.update)
        timeline.readyChanged.connect(self.update)
        timeline.loopChanged.connect(self.update)

    def draw_loop(self, painter: QPainter, marks: bool) -> None:
        """Shade the A–B loop (and, on the ruler, draw its A and B flags)."""
        loop = self.timeline.loop
        if loop is None:
            return
        a, b = (self.timeline.x_of(f) for f in loop)
        if b < 0 or a > self.width():
            return
        colour = QColor(LOOP_COLOUR)
        colour.setAlpha(70 if marks else 34)
        painter.fillRect(QRectF(a, 0, b - a, self.height()), colour)
        colour.setAlpha(230)
        painter.setPen(QPen(colour, 1.5))
        for x in (a, b):
            painter.drawLine(QPointF(x, 0), QPointF(x, self.height()))
        if marks:  # a flag at each edge's top, inside the loop: "A" and "B"
            painter.setPen(QColor("white"))
            for x, text, left in ((a, "A", 0.0), (b, "B", -12.0)):
                flag = QRectF(x + left, 0, 12, 12)
                painter.fillRect(flag, colour)
                painter.drawText(flag, Qt.AlignmentFlag.AlignCenter, text)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self.timeline.frames:
            self.timeline.seekRequested.emit(self.timeline.frame_at(event.position().x()))

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if event.buttons() & Qt.MouseButton.LeftButton and self.timeline.frames:
            self.timeline.seekRequested.emit(self.timeline.frame_at(event.position().x()))

    def wheelEvent(self, event: QWheelEvent) -> None:
        delta = event.angleDelta()
        mods = event.modifiers()
        if mods & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier):
            self.timeline.zoom(1.0015 ** delta.y(), event.position().x())
        else:
            pixels = event.pixelDelta()
            dx = pixels.x() or pixels.y() or (delta.x() or delta.y()) / 4
            self.timeline.scroll_by_px(-dx)
        event.accept()

    def draw_playhead(self, painter: QPainter) -> None:
        x = self.timeline.x_of(self.timeline.playhead)
        if 0 <= x <= self.width():
            painter.setPen(QPen(self.palette().color(QPalette.ColorRole.Highlight), 1.5))
            painter.drawLine(QPointF(x, 0), QPointF(x, self.height()))


class WaveformWidget(_TimeWidget):
    def __init__(self, timeline: Timeline, peaks: Peaks, colour: str, *, grows: bool,
                 parent: QWidget | None = None) -> None:
        super().__init__(timeline, parent)
        self.peaks = peaks
        self.colour = QColor(colour)
        self.grows = grows  # stems fill in while separating; the original is there at once
        self.audible = True
        self.decibels = False
        self._image: QImage | None = None
        self._key: tuple = ()
        self.setMinimumHeight(44)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_lane(self, peaks: Peaks, colour: str, *, grows: bool) -> None:
        self.peaks, self.colour, self.grows = peaks, QColor(colour), grows
        self.audible, self._image = True, None
        self.update()

    def set_audible(self, audible: bool) -> None:
        if audible != self.audible:
            self.audible = audible
            self.update()

    def resizeEvent(self, event: QResizeEvent) -> None:
        self.timeline.set_width(self.width())
        super().resizeEvent(event)

    def _wave_colour(self) -> QColor:
        colour = QColor(self.colour)
        if not self.audible:
            grey = 150 if is_dark(self.palette()) else 120
            colour = QColor(grey, grey, grey, 150)
        return colour

    def waveform_image(self) -> QImage:
        tl = self.timeline
        key = (tl.start, tl.frames_per_px, self.width(), self.height(), self.peaks.valid,
               self.audible, self.decibels, is_dark(self.palette()))
        if self._image is None or key != self._key:
            lo, hi = self.peaks.columns(tl.start, tl.frames_per_px, self.width())
            self._image = rasterise(lo, hi, self.width(), self.height(), self._wave_colour(),
                                    self.decibels)
            self._key = key
        return self._image

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        pal = self.palette()
        dark = is_dark(pal)
        back = QColor(self.colour)
        back.setAlpha(28 if dark else 22)
        painter.fillRect(self.rect(), pal.color(QPalette.ColorRole.Base))
        painter.fillRect(self.rect(), back)
        mid = self.height() / 2
        painter.setPen(QPen(pal.color(QPalette.ColorRole.Mid), 1))
        painter.drawLine(QPointF(0, mid), QPointF(self.width(), mid))
        painter.drawImage(0, 0, self.waveform_image())
        if self.grows:
            self._draw_pending(painter, dark)
        self.draw_loop(painter, marks=False)
        self.draw_playhead(painter)
        painter.end()

    def _draw_pending(self, painter: QPainter, dark: bool) -> None:
        """Hatch the parts that are not separated yet (gaps between the final intervals),
        with a dashed line at each edge the playback waits at."""
        tl = self.timeline
        hatch = QColor(255, 255, 255, 40) if dark else QColor(0, 0, 0, 30)
        for a, b in tl.final.gaps(0, tl.frames):
            x0, x1 = max(0.0, tl.x_of(a)), min(float(self.width()), tl.x_of(b))
            if x1 <= 0 or x0 >= self.width():
                continue
            painter.fillRect(QRectF(x0, 0, x1 - x0, self.height()),
                             QBrush(hatch, Qt.BrushStyle.BDiagPattern))
            painter.setPen(QPen(QColor(self.colour), 1, Qt.PenStyle.DashLine))
            if a > 0:
                painter.drawLine(QPointF(x0, 0), QPointF(x0, self.height()))


class RulerWidget(_TimeWidget):
    def __init__(self, timeline: Timeline, parent: QWidget | None = None) -> None:
        super().__init__(timeline, parent)
        self.setFixedHeight(26)
        self.setToolTip("Click to move the playhead; drag to set an A–B loop; drag A or B "
                        "to move it")
        self._press: tuple[float, int] | None = None  # (x, fixed frame) of a loop drag
        self._dragging = False

    # A press seeks (as before); moving on draws a loop from the press point, or moves the
    # edge of the loop that was pressed; the loop is asked for on every move.
    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or not self.timeline.frames:
            return
        x, tl = event.position().x(), self.timeline
        self._dragging = False
        edge = self._edge_at(x)
        if edge is None:
            self._press = (x, tl.frame_at(x))
            tl.seekRequested.emit(tl.frame_at(x))
        else:
            self._press, self._dragging = edge, True

    def _edge_at(self, x: float) -> tuple[float, int] | None:
        """Pressing near A keeps B fixed, and the other way round."""
        loop = self.timeline.loop
        if loop is None:
            return None
        a, b = loop
        if abs(self.timeline.x_of(b) - x) <= EDGE_PX:
            return (x, a)
        if abs(self.timeline.x_of(a) - x) <= EDGE_PX:
            return (x, b)
        return None

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._press is None or not event.buttons() & Qt.MouseButton.LeftButton:
            return
        x = event.position().x()
        if not self._dragging and abs(x - self._press[0]) < DRAG_PX:
            return
        self._dragging = True
        self.timeline.loopRequested.emit(self._press[1], self.timeline.frame_at(x))

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._press, self._dragging = None, False

    def tick_step(self) -> float:
        seconds_per_px = self.timeline.frames_per_px / max(1, self.timeline.samplerate)
        return next((s for s in TICK_STEPS if s / seconds_per_px >= 70), TICK_STEPS[-1])

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        pal, tl = self.palette(), self.timeline
        painter.fillRect(self.rect(), pal.color(QPalette.ColorRole.Window))
        painter.setPen(pal.color(QPalette.ColorRole.WindowText))
        font = painter.font()
        font.setPointSizeF(max(7.0, font.pointSizeF() - 2))
        painter.setFont(font)
        if tl.frames:
            step = self.tick_step()
            first = int(tl.seconds(tl.start) // step)
            last = int(tl.seconds(tl.start + tl.visible_frames) // step) + 1
            for i in range(first, last + 1):
                t = i * step
                x = tl.x_of(t * tl.samplerate)
                painter.drawLine(QPointF(x, self.height() - 7), QPointF(x, self.height()))
                painter.drawText(QPointF(x + 3, self.height() - 10),
                                 format_time(t, tenths=step < 1))
            self._draw_ready(painter)
            self.draw_loop(painter, marks=True)
        x = tl.x_of(tl.playhead)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(pal.color(QPalette.ColorRole.Highlight))
        painter.drawPolygon(QPolygonF([QPointF(x - 6, 0), QPointF(x + 6, 0),
                                       QPointF(x, 9)]))
        painter.end()

    def _draw_ready(self, painter: QPainter) -> None:
        """A thin bar along the bottom under each part that is separated."""
        tl = self.timeline
        colour = QColor(self.palette().color(QPalette.ColorRole.Highlight))
        colour.setAlpha(120)
        for a, b in tl.final:
            x0, x1 = max(0.0, tl.x_of(a)), min(float(self.width()), tl.x_of(b))
            if x1 > x0:
                painter.fillRect(QRectF(x0, self.height() - 2, x1 - x0, 2), colour)
