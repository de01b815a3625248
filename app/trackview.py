"""The track view: a ruler, one lane per stem plus the original mix, a scroll bar.

Each lane has a header (colour, name, Mute, Solo, volume) and a waveform. The view owns the
lanes' mute/solo/volume state and turns it into per-lane gains (`gainsChanged`); it owns no
audio. `poll()` (the window's 30 Hz timer) picks up peaks and the ready mark as they grow.
A header dragged out of the window carries that stem as a file (`drag_source`, the window's
`app.export.drag_export`); right-click offers to export it alone (`laneExportRequested`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PySide6.QtCore import QMimeData, QPoint, Qt, Signal
from PySide6.QtGui import QColor, QContextMenuEvent, QDrag, QMouseEvent, QPainter, QPaintEvent
from PySide6.QtWidgets import (
    QApplication,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMenu,
    QScrollBar,
    QSizePolicy,
    QSlider,
    QStyle,
    QStyleOptionSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.peaks import Peaks
from app.songmix import LaneMix, SongMix
from app.timeline import Timeline, format_time
from app.track import Lane, TrackAudio, lane_gains, slider_gain
from app.waveform import RulerWidget, WaveformWidget
from engine.intervals import Intervals

HEADER_WIDTH = 210
MAX_LANES = 8  # six stems, the original, and room for one more
SCROLL_STEPS = 1000  # scroll bar resolution


class _Swatch(QWidget):
    def __init__(self, colour: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.colour = QColor(colour)
        self.setFixedSize(6, 30)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(self.colour)
        painter.drawRoundedRect(self.rect(), 3, 3)
        painter.end()


def _toggle(text: str, tip: str) -> QToolButton:
    button = QToolButton()
    button.setText(text)
    button.setToolTip(tip)
    button.setCheckable(True)
    button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    button.setFixedSize(26, 22)
    return button


# One sheet for all lanes (set once: per-widget sheets are slow to apply).
LANE_STYLE = """
QLabel#lane-name { font-weight: 600; }
QToolButton#mute:checked { background: #f2c14e; color: black; border-radius: 4px;
                           font-weight: bold; }
QToolButton#solo:checked { background: #7ed957; color: black; border-radius: 4px;
                           font-weight: bold; }
"""


class JumpSlider(QSlider):
    """A slider whose knob jumps to where its track is clicked (and can be dragged on from
    there), instead of paging towards it."""

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            opt = QStyleOptionSlider()
            self.initStyleOption(opt)
            CC, SC = QStyle.ComplexControl, QStyle.SubControl
            handle = self.style().subControlRect(CC.CC_Slider, opt, SC.SC_SliderHandle, self)
            if not handle.contains(event.position().toPoint()):
                groove = self.style().subControlRect(CC.CC_Slider, opt, SC.SC_SliderGroove, self)
                span = max(1, groove.width() - handle.width())
                x = int(event.position().x() - groove.x() - handle.width() / 2)
                self.setValue(QStyle.sliderValueFromPosition(
                    self.minimum(), self.maximum(), max(0, min(span, x)), span))
        super().mousePressEvent(event)  # the knob is under the pointer now: a drag goes on


def decibels(gain: float) -> str:
    return "−∞ dB" if gain == 0 else f"{20 * np.log10(gain):+.1f} dB".replace("-", "−")


class LaneHeader(QWidget):
    changed = Signal()
    exportRequested = Signal()  # "Export “Drums”…" in its context menu

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.lane: Lane | None = None
        self.drag_source: Callable[[], QMimeData | None] | None = None
        self._press: QPoint | None = None
        self.setFixedWidth(HEADER_WIDTH)
        self.name = QLabel()
        self.name.setObjectName("lane-name")
        self.swatch = _Swatch("#999999")
        self.mute = _toggle("M", "Mute")
        self.mute.setObjectName("mute")
        self.solo = _toggle("S", "Solo")
        self.solo.setObjectName("solo")
        self.volume = JumpSlider(Qt.Orientation.Horizontal)
        self.volume.setRange(0, 100)
        self.volume.setValue(100)
        self.volume.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.volume.setToolTip("Volume 0.0 dB")
        self.volume.setMinimumWidth(60)
        self.db = QLabel(decibels(1.0))
        self.db.setObjectName("lane-db")
        self.db.setFixedWidth(self.db.fontMetrics().horizontalAdvance("−30.0 dB") + 4)
        self.db.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self._lay_out()
        for signal in (self.mute.toggled, self.solo.toggled, self.volume.valueChanged):
            signal.connect(self._changed)

    def _lay_out(self) -> None:
        """Name, mute and solo on top; the volume and its dB below; the colour swatch left."""
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.name, 1)
        top.addWidget(self.mute)
        top.addWidget(self.solo)
        column = QVBoxLayout()
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addLayout(top)
        level = QHBoxLayout()
        level.setContentsMargins(0, 0, 0, 0)
        level.setSpacing(4)
        level.addWidget(self.volume, 1)
        level.addWidget(self.db)
        column.addLayout(level)
        row = QHBoxLayout(self)
        row.setContentsMargins(6, 4, 8, 4)
        row.addWidget(self.swatch)
        row.addLayout(column, 1)

    def set_lane(self, lane: Lane) -> None:
        """Show `lane`, reset: unmuted (the original muted), no solo, full volume."""
        self.lane = lane
        self.name.setText(lane.title)
        self.swatch.colour = QColor(lane.colour)
        self.swatch.update()
        self.name.setToolTip(f"Drag {lane.title} out to a folder or a DAW to export it; "
                             "right-click for more")
        self.mute.setToolTip(f"Mute {lane.title}")
        self.solo.setToolTip(f"Solo {lane.title}")
        self.blockSignals(True)  # one gainsChanged for the whole view, from the caller
        self.mute.setChecked(lane.original)  # the original is there to compare with
        self.solo.setChecked(False)
        self.volume.setValue(100)
        self._changed()
        self.blockSignals(False)

    def context_menu(self) -> QMenu:
        menu = QMenu(self)
        if self.lane is not None and not self.lane.original:
            menu.addAction(f"Export “{self.lane.title}”…", self.exportRequested.emit)
        return menu

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        menu = self.context_menu()
        if menu.actions():
            menu.exec(event.globalPos())

    def mousePressEvent(self, event: QMouseEvent) -> None:
        left = event.button() == Qt.MouseButton.LeftButton
        self._press = event.position().toPoint() if left else None
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._press is not None and (event.position().toPoint() - self._press
                                        ).manhattanLength() >= QApplication.startDragDistance():
            self._press = None
            self.start_drag()
        super().mouseMoveEvent(event)

    def start_drag(self) -> Qt.DropAction:
        """Drag this lane out as a file: the source writes it first (a temporary file in
        the export format), then a copy drag offers its URL to the Finder or a DAW."""
        mime = self.drag_source() if self.drag_source is not None else None
        if mime is None:
            return Qt.DropAction.IgnoreAction
        drag = QDrag(self)
        drag.setMimeData(mime)
        return drag.exec(Qt.DropAction.CopyAction)

    def _changed(self) -> None:
        db = decibels(slider_gain(self.volume.value()))
        self.volume.setToolTip(f"Volume {db}")
        self.db.setText(db)
        self.changed.emit()

    def show_mix(self, mix: LaneMix) -> None:
        """Set mute, solo and volume without a `changed` per control (the caller emits)."""
        self.blockSignals(True)
        self.mute.setChecked(mix.mute)
        self.solo.setChecked(mix.solo)
        self.volume.setValue(mix.volume)
        self._changed()
        self.blockSignals(False)

    def mix(self) -> LaneMix:
        return LaneMix(self.volume.value(), self.mute.isChecked(), self.solo.isChecked())

    @property
    def gain(self) -> float:
        return slider_gain(self.volume.value())


class TrackView(QWidget):
    gainsChanged = Signal(object)  # np.ndarray of per-lane gains
    laneExportRequested = Signal(int)  # a lane's "Export “Drums”…"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.timeline = Timeline(self)
        self.track: TrackAudio | None = None
        # lane index -> the drag's data (a written file's URL), None if it cannot be made
        self.drag_source: Callable[[int], QMimeData | None] | None = None
        self.peaks: list[Peaks] = []
        self.headers: list[LaneHeader] = []
        self.waves: list[WaveformWidget] = []
        self._seen_valid: list[Intervals | None] = []
        self.title = QLabel()
        self.title.setStyleSheet("font-size: 17px; font-weight: 600;")
        self.info = QLabel()
        self.info.setStyleSheet("color: palette(mid);")
        for label in (self.title, self.info):  # a long title is cut, never widens the window
            label.setMinimumWidth(24)
        self.ruler = RulerWidget(self.timeline)
        self.scroll_bar = QScrollBar(Qt.Orientation.Horizontal)
        self.scroll_bar.valueChanged.connect(self._on_scroll)
        self.timeline.viewChanged.connect(self._sync_scroll)
        self.grid = QGridLayout()
        self.grid.setSpacing(1)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.rows: list[tuple[LaneHeader, WaveformWidget]] = []
        self.setStyleSheet(LANE_STYLE)
        self._build_layout()
        self._build_rows()

    def _build_layout(self) -> None:
        head = QHBoxLayout()
        head.addWidget(self.title)
        head.addSpacing(12)
        head.addWidget(self.info, 1)
        self.head = head
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 6)
        layout.addLayout(head)
        layout.addLayout(self.grid, 1)
        self.grid.addWidget(self.ruler, 0, 1)
        self.grid.setColumnStretch(1, 1)
        self.grid.addWidget(self.scroll_bar, 99, 1)

    # --- contents ---------------------------------------------------------------------------

    def _build_rows(self) -> None:
        """Lane rows are made once and reused: building widgets while a song separates
        would cost the GUI thread tens of milliseconds."""
        for row in range(1, MAX_LANES + 1):
            header = LaneHeader()
            wave = WaveformWidget(self.timeline, Peaks(0), "#999999", grows=False)
            header.changed.connect(self._emit_gains)
            header.exportRequested.connect(lambda i=row - 1: self.laneExportRequested.emit(i))
            header.drag_source = lambda i=row - 1: self._drag_data(i)
            self.grid.addWidget(header, row, 0)
            self.grid.addWidget(wave, row, 1)
            header.hide()
            wave.hide()
            self.rows.append((header, wave))

    def warm_up(self) -> None:
        """Lay out, polish and paint every lane row once, hidden, at start-up: the first
        show of a song would otherwise spend ~30 ms of the GUI thread on it mid-separation."""
        dummy = Lane("warm-up", "", "#999999", ())
        for header, wave in self.rows:
            header.set_lane(dummy)
            header.show()
            wave.show()
        self.ensurePolished()
        self.grab()
        for header, wave in self.rows:
            header.hide()
            wave.hide()

    def set_track(self, track: TrackAudio | None, peaks: list[Peaks] | None = None,
                  info: str = "") -> None:
        """Show `track` with its lanes (peaks may still be filling); None empties the view."""
        self.track = track
        self.title.setText(track.title if track else "")
        self.title.setToolTip(track.title if track else "")
        self.info.setText(info)
        lanes = track.lanes[:MAX_LANES] if track else []
        self.peaks = (peaks or [Peaks(track.frames) for _ in lanes]) if track else []
        self.headers = [h for h, _ in self.rows[:len(lanes)]]
        self.waves = [w for _, w in self.rows[:len(lanes)]]
        for i, (header, wave) in enumerate(self.rows):
            if i < len(lanes):
                header.set_lane(lanes[i])
                wave.set_lane(self.peaks[i], lanes[i].colour, grows=not lanes[i].original)
            header.setVisible(i < len(lanes))
            wave.setVisible(i < len(lanes))
            self.grid.setRowStretch(i + 1, 1 if i < len(lanes) else 0)
        self._seen_valid = [None] * len(self.peaks)
        self.timeline.reset(track.frames if track else 0, track.samplerate if track else 44100)
        if track is None:
            return
        self.timeline.set_width(max(1, self.waves[0].width()))
        self.poll()
        self._emit_gains()

    def add_to_head(self, widget: QWidget) -> None:
        """A control beside the song's title (the practice controls)."""
        self.head.addWidget(widget)

    def _drag_data(self, lane: int) -> QMimeData | None:
        if self.drag_source is None or self.track is None or not self.track.complete:
            return None
        return self.drag_source(lane)

    def set_info(self, text: str) -> None:
        self.info.setText(text)

    # --- state ------------------------------------------------------------------------------

    def gains(self) -> np.ndarray:
        return lane_gains([h.gain for h in self.headers], [h.mute.isChecked() for h in
                          self.headers], [h.solo.isChecked() for h in self.headers])

    def lane_mix(self) -> dict[str, LaneMix]:
        """Each lane's volume, mute and solo, by lane key (for the song's kept mix)."""
        return {h.lane.key: h.mix() for h in self.headers if h.lane is not None}

    def restore_mix(self, mix: SongMix) -> None:
        """Show a song's kept mute/solo/volume, then emit the gains once."""
        for h in self.headers:
            if h.lane is not None:
                h.show_mix(mix.lane(h.lane))
        self._emit_gains()

    def toggle(self, lane: int, solo: bool) -> None:
        """Solo (or mute) lane `lane` on or off, as its S (or M) button does; the keys 1–6
        and ⇧1–6."""
        if lane < len(self.headers):
            button = self.headers[lane].solo if solo else self.headers[lane].mute
            button.toggle()

    def _emit_gains(self) -> None:
        gains = self.gains()
        for wave, gain in zip(self.waves, gains, strict=True):
            wave.set_audible(bool(gain > 0))
        self.gainsChanged.emit(gains)

    def set_decibels(self, on: bool) -> None:
        """Draw waveforms on a decibel scale (quiet stems show their shape) or linearly."""
        for _, wave in self.rows:
            wave.decibels = on
            wave.update()

    def selected_lanes(self) -> list[int]:
        """Stem lanes that are audible now (for "export selected")."""
        gains = self.gains()
        return [i for i, h in enumerate(self.headers) if h.lane is not None and not h.lane.original
                and gains[i] > 0]

    def poll(self) -> None:
        """Pick up new peaks and the ready mark (the window's 30 Hz timer calls this)."""
        if self.track is None:
            return
        self.timeline.set_final(self.track.final)
        for i, (peaks, wave) in enumerate(zip(self.peaks, self.waves, strict=True)):
            if peaks.valid != self._seen_valid[i]:
                self._seen_valid[i] = peaks.valid
                wave.update()

    # --- scrolling ----------------------------------------------------------------------------

    def _sync_scroll(self) -> None:
        tl = self.timeline
        hidden = max(0.0, tl.frames - tl.visible_frames)
        self.scroll_bar.blockSignals(True)
        self.scroll_bar.setRange(0, SCROLL_STEPS if hidden > 0 else 0)
        self.scroll_bar.setPageStep(int(SCROLL_STEPS * tl.visible_frames / max(1, tl.frames)))
        self.scroll_bar.setValue(int(SCROLL_STEPS * tl.start / hidden) if hidden > 0 else 0)
        self.scroll_bar.blockSignals(False)

    def _on_scroll(self, value: int) -> None:
        tl = self.timeline
        hidden = max(0.0, tl.frames - tl.visible_frames)
        tl.scroll_to(hidden * value / SCROLL_STEPS)


class DropHint(QWidget):
    """The empty window: where to drop songs."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        label = QLabel("Drop songs or folders here\n\nor choose File ▸ Open…")
        label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        label.setStyleSheet("font-size: 18px; color: palette(mid); border: 2px dashed "
                            "palette(mid); border-radius: 14px; padding: 40px;")
        label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        layout = QVBoxLayout(self)
        layout.addStretch(1)
        layout.addWidget(label, 0, Qt.AlignmentFlag.AlignCenter)
        layout.addStretch(1)


__all__ = ["TrackView", "DropHint", "LaneHeader", "format_time"]
