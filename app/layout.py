"""The window at small sizes: the sidebar folds away (View ▸ Sidebar brings it back) and the
toolbar drops its longer labels before anything goes behind "»".

Widths measured with the window at 800×500 (tests/app/test_layout.py): below NARROW_PX the
toolbar shows icons only for Open and Export, "Vocals + instrumental only" becomes "2 stems"
and the model box gets narrower; making the window narrower than FOLD_PX collapses the sidebar
(wider again brings it back); a window shown at a small size keeps the sidebar it was left
with, and opening it again at that size sticks.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QMainWindow,
    QSplitter,
    QToolBar,
    QToolButton,
)

NARROW_PX = 1100
FOLD_PX = 960
SIDEBAR_PX = 270


class Responsive(QObject):
    """Watches the window's width and folds the sidebar and the toolbar's labels."""

    def __init__(self, window: QMainWindow, toolbar: QToolBar, splitter: QSplitter,
                 labelled: list[QAction], two_stems: QCheckBox, model_box: QComboBox) -> None:
        super().__init__(window)
        self.window, self.toolbar, self.splitter = window, toolbar, splitter
        self.labelled, self.two_stems, self.model_box = labelled, two_stems, model_box
        self.long_two_stems = two_stems.text()
        self.narrow: bool | None = None
        self.small: bool | None = None  # below FOLD_PX
        self.folded_by_size = False  # folded on becoming small: unfolded on becoming large
        self.sidebar_action = QAction("Sidebar", window)
        self.sidebar_action.setCheckable(True)
        self.sidebar_action.setChecked(True)
        self.sidebar_action.setShortcut(QKeySequence("Ctrl+Alt+S"))
        self.sidebar_action.setToolTip("Show or hide the queue and library (⌥⌘S)")
        self.sidebar_action.setIconText("☰")
        self.sidebar_action.toggled.connect(self.show_sidebar)
        window.addAction(self.sidebar_action)
        splitter.setCollapsible(0, True)
        splitter.splitterMoved.connect(lambda *_: self._sync_action())
        window.installEventFilter(self)

    def sidebar_shown(self) -> bool:
        side = self.splitter.widget(0)
        return side is not None and not side.isHidden() and self.splitter.sizes()[0] > 0

    def show_sidebar(self, on: bool) -> None:
        """Hidden, not only squeezed: a hidden sidebar's minimum width no longer holds the
        window wider than 800 px."""
        side = self.splitter.widget(0)
        if side is None or on == self.sidebar_shown():
            return
        total = sum(self.splitter.sizes())
        side.setVisible(on)
        if on:
            width = min(SIDEBAR_PX, total // 3)
            self.splitter.setSizes([width, max(0, total - width)])
        self._sync_action()

    def _sync_action(self) -> None:
        self.sidebar_action.blockSignals(True)
        self.sidebar_action.setChecked(self.sidebar_shown())
        self.sidebar_action.blockSignals(False)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.window and event.type() == QEvent.Type.Show:
            self.small = self.window.width() < FOLD_PX  # as restored: the person's layout
            side = self.splitter.widget(0)
            if side is not None and self.splitter.sizes()[0] == 0:
                side.hide()  # restored folded: hidden, so it does not hold the width
            self.adapt(self.window.width())
            self._sync_action()
        elif watched is self.window and event.type() == QEvent.Type.Resize and \
                self.window.isVisible():
            self.adapt(self.window.width())
        return False

    def adapt(self, width: int) -> None:
        narrow = width < NARROW_PX
        if narrow != self.narrow:
            self.narrow = narrow
            self._labels(narrow)
        small = width < FOLD_PX
        if small == self.small:
            return  # only crossing the width folds or unfolds: a choice made since sticks
        self.small = small
        if small and self.sidebar_shown():
            self.show_sidebar(False)
            self.folded_by_size = True
        elif not small and self.folded_by_size:
            self.folded_by_size = False
            self.show_sidebar(True)

    def _labels(self, narrow: bool) -> None:
        style = (Qt.ToolButtonStyle.ToolButtonIconOnly if narrow
                 else Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for action in self.labelled:
            button = self.toolbar.widgetForAction(action)
            if isinstance(button, QToolButton):
                button.setToolButtonStyle(style)
            action.setToolTip(action.text().rstrip("…"))
        self.two_stems.setText("2 stems" if narrow else self.long_two_stems)
        self.two_stems.setToolTip(self.long_two_stems)
        self.model_box.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon if narrow
            else QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.model_box.setMinimumContentsLength(12 if narrow else 0)
