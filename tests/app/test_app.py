"""Starting the app, files from Finder/Dock, settings and window state, menus, import rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QFileOpenEvent, QKeySequence, QPalette, QStandardItemModel
from PySide6.QtWidgets import QApplication

from app.main import DemixerApplication, run_app
from app.preferences import PreferencesDialog
from app.queue import State
from app.settings import Settings
from tests.app.gui import wait_for
from tests.engine.audio_files import sine_mix, write_wav


def test_run_app_opens_the_window_with_the_files_queued(model_repo, song, asked,  # type: ignore[no-untyped-def]
                                                        qtbot) -> None:
    asked.answers["Quit Demixer?"] = "Quit"  # it is separating when the window closes
    app = QApplication.instance()
    assert isinstance(app, DemixerApplication)
    seen: list[tuple[Path, State]] = []

    def look_then_quit() -> None:
        window = app.window
        assert window is not None and window.isVisible()
        seen.extend((i.path, i.state) for i in window.queue.items)
        window.close()

    QTimer.singleShot(300, look_then_quit)
    try:
        assert run_app([str(song)]) == 0
    finally:
        app.window = None
    assert seen and seen[0][0] == song and seen[0][1] in (State.PREPARING, State.SEPARATING)
    assert Settings().recent_files == [str(song.resolve())]  # in the isolated default store


def test_finder_and_dock_open_events_queue_files(make_window, model_repo, song, qtbot) -> None:  # type: ignore[no-untyped-def]
    app = QApplication.instance()
    assert isinstance(app, DemixerApplication)
    try:
        QApplication.sendEvent(app, QFileOpenEvent(str(song)))  # at launch, before a window
        assert app.pending == [str(song)]
        window = make_window()
        app.set_window(window)
        assert [i.path for i in window.queue.items] == [song] and app.pending == []
        QApplication.sendEvent(app, QFileOpenEvent(str(song)))  # later, onto the Dock icon
        assert len(window.queue.items) == 2
        for item in window.queue.items:
            wait_for(qtbot, item)
    finally:
        app.window = None


def test_settings_and_window_state_persist(make_window, settings, qtbot) -> None:  # type: ignore[no-untyped-def]
    window = make_window()
    window.model_box.setCurrentIndex(window.model_box.findData("htdemucs_ft"))
    window.two_stems_box.setChecked(True)
    window.resize(700, 560)  # within the offscreen screen (800 x 600): restore clamps to it
    qtbot.waitUntil(lambda: window.splitter.sizes()[0] == 0, timeout=2000)  # folded...
    window.responsive.sidebar_action.trigger()  # ...and the person opened it again
    window.splitter.setSizes([300, 400])
    window.close()
    store = QSettings(settings.store.fileName(), QSettings.Format.IniFormat)
    again = make_window(Settings(store), size=None)
    assert again.model_box.currentData() == "htdemucs_ft" and again.two_stems_box.isChecked()
    assert again.model_key().name == "htdemucs_ft"
    assert (again.width(), again.height()) == (700, 560)
    assert again.splitter.sizes()[0] == 300


def test_preferences_write_the_settings(settings, tmp_path, qtbot) -> None:  # type: ignore[no-untyped-def]
    dialog = PreferencesDialog(settings)
    qtbot.addWidget(dialog)
    dialog.shifts.setValue(3)
    dialog.folder.setText(str(tmp_path / "stems"))
    dialog.container.setCurrentIndex(dialog.container.findData("flac"))
    depths = dialog.depth_box.model()
    assert isinstance(depths, QStandardItemModel)  # QComboBox's own: items can be disabled
    assert not depths.item(dialog.depth_box.findData("float32")).isEnabled()
    dialog.depth_box.setCurrentIndex(dialog.depth_box.findData("int16"))
    dialog.backend.setCurrentIndex(dialog.backend.findData("torch"))
    dialog.accept()
    assert settings.shifts == 3 and settings.output_dir == tmp_path / "stems"
    assert settings.output_format().container == "flac"
    assert settings.output_format().sample_format == "int16" and settings.backend == "torch"
    fresh = Settings(QSettings(str(tmp_path / "other.ini"), QSettings.Format.IniFormat))
    assert fresh.output_dir == Path.home() / "Music" / "Demixer" and fresh.shifts == 1
    assert fresh.model == "htdemucs_6s" and fresh.sample_format == "int24"


def test_open_recent_lists_what_was_opened(window, model_repo, song, qtbot) -> None:  # type: ignore[no-untyped-def]
    [item] = window.open_paths([song])
    window.recent_menu.aboutToShow.emit()
    names = [a.text() for a in window.recent_menu.actions() if not a.isSeparator()]
    assert names == ["song.wav", "Clear Menu"]
    wait_for(qtbot, item)
    window.recent_menu.actions()[0].trigger()  # opens it again: from the library now
    assert len(window.queue.items) == 1 and window.shown_entry is not None
    assert window.shown_entry.folder == item.entry.folder


def test_a_song_already_separated_opens_from_the_library(window, model_repo, song, qtbot,  # type: ignore[no-untyped-def]
                                                         monkeypatch) -> None:
    """A relative path (a command line's) is kept absolute, with the file's size and mtime:
    the same unchanged file opens its separation; "Separate Again" still can; a changed
    file separates anew."""
    monkeypatch.chdir(song.parent)
    [item] = window.open_paths(["song.wav"])
    assert item.path == song
    wait_for(qtbot, item)
    assert item.state == State.DONE and item.entry is not None
    first = item.entry.folder
    window.show_track(None)
    assert window.open_paths(["song.wav"]) == [] and len(window.queue.items) == 1
    assert window.shown_entry is not None and window.shown_entry.folder == first
    assert window.sidebar.currentWidget() is window.library_panel
    assert [w.text().split("\n")[0] for w in window.library_view.selectedItems()] == ["song"]
    box = window.again_box
    assert box.isVisible() and "already in the library" in box.text()
    again = next(b for b in box.buttons() if b.text() == "Separate Again")
    qtbot.mouseClick(again, Qt.MouseButton.LeftButton)
    assert len(window.queue.items) == 2
    wait_for(qtbot, window.queue.items[1])
    assert window.queue.items[1].state == State.DONE
    qtbot.waitUntil(lambda: [e.folder for e in window.library.entries()] == [
        window.queue.items[1].entry.folder], timeout=5000)  # the new one replaced the old
    write_wav(song, sine_mix(3.0, 44100, amplitude=0.3), 44100)  # changed: another song
    assert len(window.open_paths([song])) == 1
    wait_for(qtbot, window.queue.items[2])


def test_menus_follow_macos_conventions(window) -> None:  # type: ignore[no-untyped-def]
    def shortcut(action: QAction) -> str:
        return action.shortcut().toString(QKeySequence.SequenceFormat.PortableText)

    assert shortcut(window.open_action) == "Ctrl+O"  # Qt shows Ctrl as ⌘ on macOS
    assert shortcut(window.close_action) == "Ctrl+W"
    assert shortcut(window.prefs_action) == "Ctrl+,"
    assert shortcut(window.quit_action) == "Ctrl+Q"
    assert window.prefs_action.menuRole() == QAction.MenuRole.PreferencesRole
    assert window.quit_action.menuRole() == QAction.MenuRole.QuitRole
    assert window.about_action.menuRole() == QAction.MenuRole.AboutRole
    menus = [a.text() for a in window.menuBar().actions()]
    assert menus == ["&File", "&Playback", "&View", "&Practice", "&Separation", "&Help"]


def test_waveforms_follow_light_and_dark(make_window, qtbot) -> None:  # type: ignore[no-untyped-def]
    from app.library import Library
    from tests.app.helpers import make_entry, stems_audio

    window = make_window()
    window.show_entry(make_entry(Library(), "Song", stems_audio(44100)))
    wave = window.track_view.waves[0]
    brightness = []
    for base in ("#ffffff", "#1e1e1e"):
        palette = QPalette(window.palette())
        for role in (QPalette.ColorRole.Base, QPalette.ColorRole.Window):
            palette.setColor(role, base)
        wave.setPalette(palette)
        image = wave.grab().toImage()
        brightness.append(image.pixelColor(2, 2).lightness())
    assert brightness[0] > 200 and brightness[1] < 60


def test_the_qt_free_modules_do_not_import_qt() -> None:
    code = ("import sys, app.track, app.peaks, app.mixer, app.library, app.worker; "
            "assert not [m for m in sys.modules if m.startswith('PySide6')], 'Qt imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_remove_takes_a_finished_item_off_the_queue(window, model_repo, tmp_path, qtbot) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtCore import Qt

    missing = tmp_path / "gone.wav"
    [item] = window.open_paths([missing])
    wait_for(qtbot, item)
    assert item.state == State.FAILED and "gone.wav" in item.message
    row = window.queue_view.row_for(item)
    qtbot.mouseClick(row.remove, Qt.MouseButton.LeftButton)
    assert window.queue.items == [] and window.queue_view.count() == 0
    (tmp_path / "nothing here").mkdir()
    assert window.open_paths([tmp_path / "nothing here"]) == []  # said, not silently ignored
    assert window.statusBar().currentMessage() == "No audio files in nothing here."


def test_the_highlighted_rows_are_the_song_shown(make_window, model_repo, song, tmp_path,  # type: ignore[no-untyped-def]
                                                 qtbot) -> None:
    from app.library import Library
    from tests.app.helpers import make_entry, stems_audio

    entry = make_entry(Library(), "Groove", stems_audio(44100))
    window = make_window()
    other = write_wav(tmp_path / "other.wav", sine_mix(3.0, 44100, amplitude=0.3), 44100)
    first, second = window.open_paths([song, other])
    for item in (first, second):
        wait_for(qtbot, item)
    queue, library = window.queue_view, window.library_view

    def highlighted() -> tuple[list[int], list[str]]:
        rows = [queue.row(w) for w in queue.selectedItems()]
        titles = [w.text().split("\n")[0] for w in library.selectedItems()]
        return rows, titles

    assert window.shown_item is first and highlighted() == ([0], [])  # shown when it started
    window.show_item(second)
    assert highlighted() == ([1], [])
    window.show_entry(entry)
    assert highlighted() == ([], ["Groove"])
    window.show_item(second)
    assert highlighted() == ([1], [])
    [waiting] = window.open_paths([tmp_path / "gone.wav"])  # fails: nothing to show
    wait_for(qtbot, waiting)
    queue.setCurrentRow(2)
    queue.itemClicked.emit(queue.item(2))
    assert window.shown_item is second and highlighted() == ([1], [])
    window.show_track(None)
    assert highlighted() == ([], [])


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="the Linux/BSD wording")
def test_show_in_file_manager_off_macos_and_one_sentence_without_one(  # type: ignore[no-untyped-def]
        make_window, tmp_path, monkeypatch, qtbot) -> None:
    from PySide6.QtWidgets import QMessageBox

    from app.library import Library
    from tests.app.helpers import make_entry, stems_audio

    entry = make_entry(Library(), "Groove", stems_audio(44100))
    window = make_window()
    window.show_entry(entry)
    texts = [a.text() for m in window.menuBar().actions() for a in m.menu().actions()]
    assert "Show in File Manager" in texts and not any("Finder" in t for t in texts)
    shown: list[str] = []
    monkeypatch.setattr(QMessageBox, "about", lambda parent, title, text: shown.append(text))
    window.about_action.trigger()
    assert shown and "Mac" not in shown[0]
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no xdg-open, gio, kde-open...
    window.reveal_action.trigger()
    message = window.statusBar().currentMessage()
    assert message.startswith("No file manager could be found to show ")
    assert str(entry.folder) in message and "xdg-open" in message
    tools = tmp_path / "bin"
    tools.mkdir()
    opened = tmp_path / "opened.txt"
    fake = tools / "xdg-open"
    fake.write_text(f'#!/bin/sh\necho "$@" > {opened}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    window.statusBar().clearMessage()
    window.reveal_action.trigger()
    qtbot.waitUntil(opened.exists, timeout=5000)
    assert opened.read_text().strip() == str(entry.folder)
    assert window.statusBar().currentMessage() == ""
