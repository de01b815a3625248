"""The practice controls: A–B loop (keys I / O, L, and dragging on the ruler), speed and
pitch, wired to the mixer (`Mixer.set_practice`) and the timeline (the loop drawn on the ruler
and lanes). The main window adds `menu` to its menu bar and `bar` to its toolbar.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QHBoxLayout, QLabel, QMenu, QSpinBox, QToolButton, QWidget

from app.mixer import Mixer
from app.practice import Loop, Practice, make_loop
from app.songmix import SongMix
from app.stretch import SEMITONE_RANGE, SPEED_RANGE, Rate
from app.timeline import Timeline


class _SignedSpin(QSpinBox):
    """Shows "+2 st" for a transposition up (QSpinBox shows "2 st")."""

    def textFromValue(self, value: int) -> str:
        return f"{value:+d}" if value else "0"


def _spin(low: int, high: int, suffix: str, tip: str, signed: bool = False) -> QSpinBox:
    box = _SignedSpin() if signed else QSpinBox()
    box.setRange(low, high)
    box.setSuffix(suffix)
    box.setToolTip(tip)
    box.setKeyboardTracking(False)  # typing "8", "80" applies once, at 80
    box.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
    return box


class PracticeBar(QWidget):
    """Loop button, speed (50–150 %) and transpose (−12…+12 semitones) boxes."""

    def __init__(self, loop_action: QAction, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loop = QToolButton()
        self.loop.setDefaultAction(loop_action)
        self.speed = _spin(round(SPEED_RANGE[0] * 100), round(SPEED_RANGE[1] * 100), " %",
                           "Playback speed, pitch kept (- and ⇧= step it)")
        self.speed.setValue(100)
        self.speed.setSingleStep(5)
        self.pitch = _spin(SEMITONE_RANGE[0], SEMITONE_RANGE[1], " st",
                           "Transpose in semitones, tempo kept (= and ⇧- step it)", True)
        self.pitch.setValue(0)
        row = QHBoxLayout(self)
        row.setContentsMargins(4, 0, 4, 0)
        row.setSpacing(4)
        row.addWidget(self.loop)
        for label, box in (("Speed", self.speed), ("Pitch", self.pitch)):
            row.addWidget(QLabel(label))
            row.addWidget(box)

    def rate(self) -> Rate:
        return Rate(self.speed.value() / 100.0, float(self.pitch.value()))

    def show_rate(self, rate: Rate) -> None:
        for box, value in ((self.speed, round(rate.speed * 100)),
                           (self.pitch, round(rate.semitones))):
            box.blockSignals(True)
            box.setValue(value)
            box.blockSignals(False)


class PracticeController(QObject):
    """Owns the loop marks and the rate of the song that is open; tells mixer and timeline."""

    changed = Signal()  # loop or rate changed by the listener (the song's mix to be kept)

    def __init__(self, timeline: Timeline, mixer: Mixer, parent: QWidget) -> None:
        super().__init__(parent)
        self.timeline, self.mixer = timeline, mixer
        self.marks: tuple[int | None, int | None] = (None, None)  # A, B as set by keys
        self.looping = False
        self.menu = QMenu("&Practice", parent)
        self.loop_action = self._action("Loop A–B", "L", self.toggle_loop, checkable=True)
        self.loop_action.setIconText("Loop")  # the button; the menu says "Loop A–B"
        self.loop_action.setToolTip("Loop between A and B (L); set them with I and O, or "
                                    "drag on the ruler")
        self.menu.addAction(self._action("Set Loop Start (A) Here", "I", self.set_a))
        self.menu.addAction(self._action("Set Loop End (B) Here", "O", self.set_b))
        self.menu.addAction(self.loop_action)
        self.menu.addAction(self._action("Clear Loop", "Shift+L", self.clear_loop))
        self.menu.addSeparator()
        self.menu.addAction(self._action("Slower", "-", lambda: self._step(-5, 0)))
        self.menu.addAction(self._action("Faster", "Shift+=", lambda: self._step(5, 0)))
        self.menu.addAction(self._action("Transpose Down", "Shift+-", lambda: self._step(0, -1)))
        self.menu.addAction(self._action("Transpose Up", "=", lambda: self._step(0, 1)))
        self.menu.addAction(self._action("Normal Speed and Pitch", "0", self.reset_rate))
        self.bar = PracticeBar(self.loop_action)
        self.bar.speed.valueChanged.connect(self._rate_edited)
        self.bar.pitch.valueChanged.connect(self._rate_edited)
        timeline.loopRequested.connect(self._dragged)
        self.set_enabled(False)

    def _action(self, text: str, keys: str, slot: object, checkable: bool = False) -> QAction:
        action = QAction(text, self)
        action.setShortcut(QKeySequence(keys))
        action.setCheckable(checkable)
        action.triggered.connect(slot)
        parent = self.parent()
        if isinstance(parent, QWidget):
            parent.addAction(action)  # shortcuts work wherever the focus is in the window
        return action

    def set_enabled(self, on: bool) -> None:
        for action in self.menu.actions():
            action.setEnabled(on)
        self.bar.setEnabled(on)

    # --- the song's state ------------------------------------------------------------------

    def restore(self, mix: SongMix, frames: int) -> None:
        """Show and apply a song's kept loop and rate (a song just opened)."""
        loop = mix.practice(frames).loop
        self.marks = (loop.a, loop.b) if loop else (None, None)
        self.looping = loop is not None
        self.bar.show_rate(mix.rate.clamped())
        self.set_enabled(frames > 0)
        self._apply()

    def state(self) -> tuple[tuple[int, int] | None, Rate]:
        """The loop (when on) and the rate, for the song's kept mix."""
        loop = self._loop()
        return ((loop.a, loop.b) if loop else None), self.bar.rate()

    def _loop(self) -> Loop | None:
        a, b = self.marks
        if not self.looping or b is None:
            return None
        return make_loop(a or 0, b, self.timeline.frames)

    def _apply(self) -> None:
        loop = self._loop()
        self.looping = loop is not None
        self.loop_action.setChecked(self.looping)
        self.timeline.set_loop((loop.a, loop.b) if loop else None)
        self.mixer.set_practice(Practice(loop=loop, rate=self.bar.rate()))
        if loop is not None and not loop.a <= self.mixer.position < loop.b:
            if self.mixer.position >= loop.b or not self.mixer.playing:
                self.timeline.seekRequested.emit(loop.a)  # into the loop, as a player would

    # --- the listener's gestures ----------------------------------------------------------

    def set_a(self) -> None:
        a, b = self.mixer.position, self.marks[1]
        self.marks = (a, b if b is not None and b > a else None)
        self.looping = self.marks[1] is not None
        self._changed()

    def set_b(self) -> None:
        a, b = self.marks[0], self.mixer.position
        self.marks = (a if a is not None and a < b else 0, b)
        self.looping = True
        self._changed()

    def toggle_loop(self) -> None:
        self.looping = not self.looping and self.marks[1] is not None
        self._changed()

    def clear_loop(self) -> None:
        self.marks, self.looping = (None, None), False
        self._changed()

    def _dragged(self, a: int, b: int) -> None:
        self.marks, self.looping = (min(a, b), max(a, b)), True
        self._changed()

    def reset_rate(self) -> None:
        self.bar.show_rate(Rate())
        self._changed()

    def _step(self, speed: int, semitones: int) -> None:
        self.bar.show_rate(Rate(self.bar.speed.value() / 100 + speed / 100,
                                self.bar.pitch.value() + semitones).clamped())
        self._changed()

    def _rate_edited(self) -> None:
        self._changed()

    def _changed(self) -> None:
        self._apply()
        self.changed.emit()
