"""The sidebar lists: the separation queue (state, progress, cancel/retry/remove, the total
time left) and the library of finished songs (search, sort, open, export, reveal, delete)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from PySide6.QtCore import QPoint, Qt, Signal
from PySide6.QtGui import QAction, QColor, QKeyEvent
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QProgressBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.library import Damaged, LibraryEntry
from app.queue import QueueItem, SeparationQueue, State, format_eta
from app.queue_eta import total_eta
from app.reveal import reveal_title
from app.settings import MODELS
from app.timeline import format_time
from engine.catalogue import get_entry


def _button(text: str, tip: str) -> QToolButton:
    button = QToolButton()
    button.setText(text)
    button.setToolTip(tip)
    button.setAutoRaise(True)
    button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    return button


def _select(view: QListWidget, widget: QListWidgetItem | None) -> None:
    """Make `widget` the one highlighted row of `view` (none if None), quietly."""
    view.blockSignals(True)
    try:
        view.clearSelection()
        if widget is None:
            view.setCurrentRow(-1)
        else:
            view.setCurrentItem(widget)
            widget.setSelected(True)
    finally:
        view.blockSignals(False)
    view.viewport().update()


class QueueRow(QWidget):
    def __init__(self, item: QueueItem, queue: SeparationQueue,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.item = item
        self.name = QLabel(item.path.name)
        self.name.setStyleSheet("font-weight: 600;")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        self.bar.setFixedHeight(5)
        self.cancel = _button("✕", "Cancel")
        self.retry = _button("↻", "Retry")
        self.resume = _button("Resume", "Continue the separation where it stopped")
        self.remove = _button("−", "Remove from the queue")
        self.cancel.clicked.connect(lambda: queue.cancel(item))
        self.retry.clicked.connect(lambda: queue.retry(item))
        self.resume.clicked.connect(lambda: queue.resume(item))
        self.remove.clicked.connect(lambda: queue.remove(item))
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.name, 1)
        for b in (self.cancel, self.resume, self.retry, self.remove):
            top.addWidget(b)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 6)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addWidget(self.status)
        layout.addWidget(self.bar)
        self.refresh()

    def refresh(self) -> None:
        item = self.item
        self.status.setText(item.status_text())
        self.status.setToolTip(item.message)
        colour = "#d9534f" if item.state == State.FAILED else "palette(mid)"
        self.status.setStyleSheet(f"color: {colour};")
        running = item.state in (State.PREPARING, State.SEPARATING)
        self.bar.setVisible(running)
        if item.state == State.PREPARING:
            self.bar.setRange(0, 0)  # busy
        else:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(1000 * item.fraction) if item.stage == "separating" else 0)
        self.cancel.setVisible(running or item.state == State.QUEUED)
        self.retry.setVisible(item.state in (State.FAILED, State.CANCELLED))
        self.retry.setToolTip(f"Resume from {item.fraction:.0%}" if item.resume else "Retry")
        self.resume.setVisible(item.state == State.INTERRUPTED)
        self.remove.setVisible(not running)
        if item.state == State.INTERRUPTED:
            self.remove.setToolTip("Remove from the queue, with its partial stems")


class QueueView(QListWidget):
    showRequested = Signal(object)  # QueueItem

    def __init__(self, queue: SeparationQueue, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.queue = queue
        self.rows: dict[int, tuple[QListWidgetItem, QueueRow]] = {}
        queue.added.connect(self._add)
        queue.changed.connect(self._refresh)
        queue.removed.connect(self._remove)
        self.itemClicked.connect(self._clicked)
        self.itemActivated.connect(self._clicked)

    def _add(self, item: QueueItem) -> None:
        widget = QListWidgetItem()
        row = QueueRow(item, self.queue)
        widget.setData(Qt.ItemDataRole.UserRole, item.id)
        self.addItem(widget)
        self.setItemWidget(widget, row)
        widget.setSizeHint(row.sizeHint())
        self.rows[item.id] = (widget, row)

    def _refresh(self, item: QueueItem) -> None:
        if item.id in self.rows:
            widget, row = self.rows[item.id]
            row.refresh()
            widget.setSizeHint(row.sizeHint())

    def _remove(self, item: QueueItem) -> None:
        if item.id in self.rows:
            widget, _ = self.rows.pop(item.id)
            self.takeItem(self.row(widget))

    def row_for(self, item: QueueItem) -> QueueRow:
        return self.rows[item.id][1]

    def select(self, item: QueueItem | None) -> None:
        """Highlight `item`'s row (the song shown), or none."""
        widget = self.rows[item.id][0] if item is not None and item.id in self.rows else None
        _select(self, widget)

    def _clicked(self, widget: QListWidgetItem) -> None:
        item_id = widget.data(Qt.ItemDataRole.UserRole)
        item = next((i for i in self.queue.items if i.id == item_id), None)
        if item is not None:
            self.showRequested.emit(item)


class LibraryView(QListWidget):
    openRequested = Signal(object)  # LibraryEntry
    exportRequested = Signal(object)
    revealRequested = Signal(object)
    deleteRequested = Signal(object)
    damagedRequested = Signal(object)  # app.library.Damaged: delete or keep?
    separateRequested = Signal(object, str)  # LibraryEntry, model name: separate it again

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.entries: list[LibraryEntry] = []
        self.damaged: list[Damaged] = []
        self.sort = "date"  # a key of SORTS
        self.search = ""
        self.itemClicked.connect(self._open)
        self.itemActivated.connect(self._open)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)

    def set_entries(self, entries: list[LibraryEntry], damaged: Sequence[Damaged] = ()) -> None:
        """Finished songs, then folders that cannot be read (listed, never hidden)."""
        self.clear()
        key, reverse = SORTS[self.sort]
        entries = sorted(entries, key=key, reverse=reverse)
        self.entries, self.damaged = entries, list(damaged)
        for index, entry in enumerate(entries):
            when = time.strftime("%d %b %Y", time.localtime(entry.created))
            two = " · vocals/instrumental" if entry.two_stems else ""
            widget = QListWidgetItem(f"{entry.title}\n{entry.model}{two} · "
                                     f"{format_time(entry.seconds, tenths=False)} · {when}")
            widget.setData(Qt.ItemDataRole.UserRole, index)
            widget.setToolTip(entry.source)
            self.addItem(widget)
        for index, bad in enumerate(self.damaged, start=len(entries)):
            widget = QListWidgetItem(f"⚠ {bad.folder.name}\nDamaged: {bad.reason}")
            widget.setData(Qt.ItemDataRole.UserRole, index)
            widget.setToolTip(f"{bad.folder}: click to delete or keep it")
            widget.setForeground(QColor("#d9534f"))
            self.addItem(widget)
        self.set_search(self.search)

    def set_search(self, text: str) -> None:
        """Show only the songs whose title, file or model contains every word of `text`."""
        self.search = text
        words = text.casefold().split()
        for row in range(len(self.entries)):
            e = self.entries[row]
            hay = f"{e.title} {e.source} {e.model}".casefold()
            self.item(row).setHidden(not all(w in hay for w in words))

    def set_sort(self, sort: str) -> None:
        if sort != self.sort:
            self.sort = sort
            self.set_entries(self.entries, self.damaged)

    def _entry(self, widget: QListWidgetItem) -> LibraryEntry | Damaged:
        index = int(widget.data(Qt.ItemDataRole.UserRole))
        return self.entries[index] if index < len(self.entries) else (
            self.damaged[index - len(self.entries)])

    def _open(self, widget: QListWidgetItem) -> None:
        entry = self._entry(widget)
        if isinstance(entry, Damaged):
            self.damagedRequested.emit(entry)
        else:
            self.openRequested.emit(entry)

    def select(self, entry: LibraryEntry | None) -> None:
        """Highlight `entry`'s row (the song shown), or none."""
        index = next((i for i, e in enumerate(self.entries)
                      if entry is not None and e.folder == entry.folder), None)
        _select(self, None if index is None else self.item(index))

    def current_entry(self) -> LibraryEntry | None:
        widget = self.currentItem()
        entry = None if widget is None else self._entry(widget)
        return entry if isinstance(entry, LibraryEntry) else None

    def _menu(self, pos: QPoint) -> None:
        widget = self.itemAt(pos)
        if widget is None:
            return
        entry = self._entry(widget)
        menu = QMenu(self)
        if isinstance(entry, Damaged):
            action = QAction("Delete or Keep…", menu)
            action.triggered.connect(lambda _=False: self.damagedRequested.emit(entry))
            menu.addAction(action)
            menu.popup(self.viewport().mapToGlobal(pos))
            return
        for text, signal in (("Open", self.openRequested), ("Export…", self.exportRequested),
                             (reveal_title(), self.revealRequested),
                             ("Delete…", self.deleteRequested)):
            action = QAction(text, menu)
            action.triggered.connect(lambda _=False, s=signal: s.emit(entry))
            menu.addAction(action)
        menu.insertMenu(menu.actions()[2], self._again_menu(entry, menu))
        menu.popup(self.viewport().mapToGlobal(pos))

    def _again_menu(self, entry: LibraryEntry, parent: QMenu) -> QMenu:
        """"Separate Again With ▸" every model (the one it was made with is marked)."""
        again = QMenu("Separate Again With", parent)
        for name in MODELS:
            action = QAction(get_entry(name).title + (" (this one)" if name == entry.model
                                                      else ""), again)
            action.triggered.connect(
                lambda _=False, n=name: self.separateRequested.emit(entry, n))
            again.addAction(action)
        return again

    def keyPressEvent(self, event: QKeyEvent) -> None:
        entry = self.current_entry()
        if entry is not None and event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace):
            self.deleteRequested.emit(entry)
            return
        super().keyPressEvent(event)


SORTS = {  # title, key, newest/longest first
    "date": (lambda e: e.created, True),
    "title": (lambda e: e.title.casefold(), False),
    "length": (lambda e: e.seconds, True),
}
SORT_TITLES = {"date": "Newest first", "title": "Title A–Z", "length": "Longest first"}


class LibraryPanel(QWidget):
    """The library list with a search field and a sort choice above it."""

    def __init__(self, view: LibraryView, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = view
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search the library")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(view.set_search)
        self.sort = QComboBox()
        for key, title in SORT_TITLES.items():
            self.sort.addItem(title, key)
        self.sort.setToolTip("Sort the library")
        self.sort.currentIndexChanged.connect(lambda: view.set_sort(self.sort.currentData()))
        top = QHBoxLayout()
        top.setContentsMargins(4, 4, 4, 0)
        top.addWidget(self.search, 1)
        top.addWidget(self.sort)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(top)
        layout.addWidget(view, 1)


class QueuePanel(QWidget):
    """The queue list with the total time left above it (refreshed as the queue moves)."""

    def __init__(self, view: QueueView, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = view
        self.total = QLabel()
        self.total.setStyleSheet("color: palette(mid); padding: 4px 6px 0 6px;")
        for signal in (view.queue.added, view.queue.changed, view.queue.removed):
            signal.connect(self.refresh)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.total)
        layout.addWidget(view, 1)
        self.refresh()

    def refresh(self) -> None:
        items = self.view.queue.items
        waiting = [i for i in items if i.state in (State.QUEUED, State.PREPARING,
                                                   State.SEPARATING)]
        if not waiting:
            self.total.hide()
            return
        eta = total_eta(items)
        songs = f"{len(waiting)} song{'s' if len(waiting) > 1 else ''} to separate"
        self.total.setText(songs + ("" if eta is None else f" · about {format_eta(eta)} left"))
        self.total.show()
