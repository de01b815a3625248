"""The main window's actions, toolbar and menus (a part of `MainWindow`, see app.mainwindow).

Every command is a `QAction` added to the window (its shortcut works with the menu bar hidden
too); the toolbar and the menus show the same actions. The slots they call are the window's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QAction, QIcon, QKeySequence, QPalette
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QLabel,
    QMainWindow,
    QMenu,
    QStyle,
    QToolBar,
    QToolButton,
    QWidget,
)

from app.icons import transport_icon
from app.mixer import Mixer
from app.queue import SeparationQueue
from app.reveal import reveal_title
from app.settings import Settings
from app.trackview import TrackView
from engine.catalogue import get_entry
from engine.options import MODELS

SEEK_S = 5.0
FINE_SEEK_S = 1.0

if TYPE_CHECKING:
    _Window = QMainWindow
else:
    _Window = object


class WindowActions(_Window):
    """Builds and holds the window's actions, toolbar and menus: a mixin of `MainWindow`,
    which supplies the attributes and slots declared here."""

    settings: Settings
    mixer: Mixer
    queue: SeparationQueue
    track_view: TrackView
    time_label: QLabel
    play_icon: QIcon
    pause_icon: QIcon

    if TYPE_CHECKING:
        def choose_files(self) -> None: ...
        def export(self) -> None: ...
        def reveal_current(self) -> None: ...
        def preferences(self) -> None: ...
        def about(self) -> None: ...
        def toggle_play(self) -> None: ...
        def seek(self, frame: int) -> None: ...
        def seek_by(self, seconds: float) -> None: ...
        def set_decibels(self, on: bool) -> None: ...
        def open_paths(self, paths: list[str] | list[Path]) -> object: ...

    def _action(self, text: str, shortcut: str | QKeySequence | None, slot: object,
                role: QAction.MenuRole | None = None) -> QAction:
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        if role is not None:
            action.setMenuRole(role)
        self.addAction(action)  # shortcuts work with the menu bar hidden too
        return action

    def _build_actions(self) -> None:
        # "Ctrl" is ⌘ on macOS
        a, R = self._action, QAction.MenuRole
        self.open_action = a("Open…", "Ctrl+O", self.choose_files)
        self.export_action = a("Export…", "Ctrl+E", self.export)
        self.reveal_action = a(reveal_title(), "Ctrl+Shift+R", self.reveal_current)
        self.close_action = a("Close Window", "Ctrl+W", self.close)
        self.quit_action = a("Quit Demixer", "Ctrl+Q", self.close, R.QuitRole)
        self.prefs_action = a("Preferences…", "Ctrl+,", self.preferences, R.PreferencesRole)
        self.about_action = a("About Demixer", None, self.about, R.AboutRole)
        self.play_action = a("Play", "Space", self.toggle_play)
        self.start_action = a("Go to Start", "Home", lambda: self.seek(0))
        self.back_action = a("Back 5 Seconds", "Left", lambda: self.seek_by(-SEEK_S))
        self.fwd_action = a("Forward 5 Seconds", "Right", lambda: self.seek_by(SEEK_S))
        self.back1_action = a("Back 1 Second", "Shift+Left", lambda: self.seek_by(-FINE_SEEK_S))
        self.fwd1_action = a("Forward 1 Second", "Shift+Right",
                             lambda: self.seek_by(FINE_SEEK_S))
        self.zoom_in_action = a("Zoom In", "Ctrl+=", lambda: self.track_view.timeline.zoom(2.0))
        self.zoom_out_action = a("Zoom Out", "Ctrl+-",
                                 lambda: self.track_view.timeline.zoom(0.5))
        self.fit_action = a("Zoom to Fit", "Ctrl+0", lambda: self.track_view.timeline.fit())
        self.cancel_all_action = a("Cancel All Separations", None, self.queue.cancel_all)
        self.decibels_action = a("Waveforms in Decibels", None, self.set_decibels)
        self.decibels_action.setCheckable(True)
        self.decibels_action.setChecked(self.settings.waveform_decibels)

    def _icons(self) -> None:
        style, P = self.style(), QStyle.StandardPixmap
        self.open_action.setIcon(style.standardIcon(P.SP_DialogOpenButton))
        self.export_action.setIcon(style.standardIcon(P.SP_DialogSaveButton))
        self._transport_icons()
        self.zoom_out_action.setIconText("−")
        self.zoom_in_action.setIconText("+")
        self.fit_action.setIconText("Fit")
        for action in (self.zoom_out_action, self.fit_action, self.zoom_in_action):
            action.setToolTip(action.text())

    def _transport_icons(self) -> None:
        colour = self.palette().color(QPalette.ColorRole.ButtonText)
        self.play_icon = transport_icon("play", colour)
        self.pause_icon = transport_icon("pause", colour)
        self.start_action.setIcon(transport_icon("start", colour))
        self.play_action.setIcon(self.pause_icon if self.mixer.playing else self.play_icon)

    def _build_toolbar(self) -> None:
        self._icons()
        bar = QToolBar("Main")
        bar.setObjectName("main-toolbar")
        bar.setMovable(False)
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        bar.addAction(self.open_action)
        self._model_boxes()
        bar.addWidget(self.model_box)
        bar.addWidget(self.two_stems_box)
        bar.addSeparator()
        self.play_button = QToolButton()
        self.play_button.setDefaultAction(self.play_action)
        self.play_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.play_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        self.play_button.setIconSize(QSize(22, 22))
        start = QToolButton()
        start.setDefaultAction(self.start_action)
        start.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        start.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        bar.addWidget(start)
        bar.addWidget(self.play_button)
        bar.addWidget(self.time_label)
        bar.addSeparator()
        for action in (self.zoom_out_action, self.fit_action, self.zoom_in_action):
            bar.addAction(action)
        spacer = QWidget()
        spacer.setSizePolicy(spacer.sizePolicy().horizontalPolicy().Expanding,
                             spacer.sizePolicy().verticalPolicy())
        bar.addWidget(spacer)
        bar.addAction(self.export_action)
        self.addToolBar(bar)
        self.toolbar = bar

    def _model_boxes(self) -> None:
        """The model for the songs added next, and the two-stem switch."""
        self.model_box = QComboBox()
        for name in MODELS:
            self.model_box.addItem(get_entry(name).title, name)
        self.model_box.setCurrentIndex(max(0, self.model_box.findData(self.settings.model)))
        self.model_box.setToolTip("Model for the songs you add next")
        self.model_box.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.two_stems_box = QCheckBox("Vocals + instrumental only")
        self.two_stems_box.setChecked(self.settings.two_stems)
        self.two_stems_box.setFocusPolicy(Qt.FocusPolicy.NoFocus)

    def _build_menus(self) -> None:
        menus = self.menuBar()
        file = menus.addMenu("&File")
        file.addAction(self.open_action)
        self.recent_menu = QMenu("Open Recent", self)
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        file.addMenu(self.recent_menu)
        file.addSeparator()
        file.addActions([self.export_action, self.reveal_action])
        file.addSeparator()
        file.addActions([self.close_action, self.prefs_action, self.quit_action])
        play = menus.addMenu("&Playback")
        play.addActions([self.play_action, self.start_action, self.back_action,
                         self.fwd_action, self.back1_action, self.fwd1_action])
        view = menus.addMenu("&View")
        view.addActions([self.zoom_in_action, self.zoom_out_action, self.fit_action])
        view.addSeparator()
        view.addAction(self.decibels_action)
        separation = menus.addMenu("&Separation")
        separation.addAction(self.cancel_all_action)
        help_menu = menus.addMenu("&Help")
        help_menu.addAction(self.about_action)


    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent_files
        for path in recent:
            action = self.recent_menu.addAction(Path(path).name)
            action.setToolTip(path)
            action.triggered.connect(lambda _=False, p=path: self.open_paths([p]))
        if recent:
            self.recent_menu.addSeparator()
        clear = self.recent_menu.addAction("Clear Menu")
        clear.setEnabled(bool(recent))
        clear.triggered.connect(self.settings.clear_recent)

