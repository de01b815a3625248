"""Separation ▸ Quality: the calibration gate (default, exact, fast) as a menu choice, so the
fast mode the CLI has (`--quality fast`) is one click away; the same setting as Preferences'
Quality box. It applies to the songs added next (their `ModelKey.quality`)."""

from __future__ import annotations

from PySide6.QtGui import QAction, QActionGroup
from PySide6.QtWidgets import QMenu, QWidget

from app.settings import QUALITIES, Settings

MENU_TITLES = {"default": "Default (within 60 dB of the reference)",
               "exact": "Exact (as demucs, within 70 dB)",
               "fast": "Fast (within 40 dB: the quickest backend that passes)"}


def quality_menu(settings: Settings, parent: QWidget) -> QMenu:
    menu = QMenu("Quality", parent)
    menu.setToolTipsVisible(True)
    group = QActionGroup(menu)
    group.setExclusive(True)
    for quality in QUALITIES:
        action = QAction(MENU_TITLES[quality], menu)
        action.setCheckable(True)
        action.setData(quality)
        action.setToolTip("For the songs you add next")
        action.triggered.connect(lambda _=False, q=quality: setattr(settings, "quality", q))
        group.addAction(action)
        menu.addAction(action)

    def show_current() -> None:  # Preferences may have changed it
        for action in group.actions():
            action.setChecked(action.data() == settings.quality)

    menu.aboutToShow.connect(show_current)
    show_current()
    return menu
