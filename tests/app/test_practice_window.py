"""The practice tools and small things in the real window: keys, title, the kept mix,
Export's starting point, re-separating with another model, quality, zoom keys, 800×500."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence

from app.export import ExportDialog
from app.library import Library
from app.protocol import ModelKey
from app.stretch import Rate
from tests.app.helpers import RATE, make_entry, stems_audio

SECONDS = 4


@pytest.fixture
def shown(make_window, qtbot):  # type: ignore[no-untyped-def]
    entry = make_entry(Library(), "Blue Train", stems_audio(SECONDS * RATE))
    window = make_window()
    window.show_entry(entry)
    window.activateWindow()
    qtbot.waitUntil(lambda: window.isActiveWindow(), timeout=2000)
    return window, entry


def test_title_and_stem_keys(shown, qtbot) -> None:  # type: ignore[no-untyped-def]
    window, _ = shown
    assert window.windowTitle() == "Blue Train — Demixer"
    qtbot.keyClick(window, Qt.Key.Key_4)  # solo vocals
    assert window.mixer.gains.tolist() == [0, 0, 0, 1, 0]
    qtbot.keyClick(window, Qt.Key.Key_4)
    qtbot.keyClick(window, Qt.Key.Key_1, Qt.KeyboardModifier.ShiftModifier)  # mute drums
    assert window.mixer.gains.tolist() == [0, 1, 1, 1, 0]
    window.show_track(None)
    assert window.windowTitle() == "Demixer"


def test_loop_keys_and_rate_reach_the_mixer_and_are_kept(make_window, shown, qtbot) -> None:  # type: ignore[no-untyped-def]
    window, entry = shown
    window.seek(RATE)
    qtbot.keyClick(window, Qt.Key.Key_I)
    window.seek(3 * RATE)
    qtbot.keyClick(window, Qt.Key.Key_O)
    loop = window.mixer.practice.loop
    assert loop is not None and (loop.a, loop.b) == (RATE, 3 * RATE)
    assert window.track_view.timeline.loop == (RATE, 3 * RATE)
    assert window.mixer.position == RATE  # at B: back into the loop, as a player does
    qtbot.keyClick(window, Qt.Key.Key_Minus)  # 5 % slower
    qtbot.keyClick(window, Qt.Key.Key_Equal)  # a semitone up
    assert window.mixer.practice.rate == Rate(0.95, 1.0)
    qtbot.keyClick(window, Qt.Key.Key_L)  # loop off, marks kept
    assert window.mixer.practice.loop is None
    qtbot.keyClick(window, Qt.Key.Key_L)
    assert window.mixer.practice.loop == loop
    qtbot.keyClick(window, Qt.Key.Key_2)  # solo bass
    window.show_track(None)  # closing keeps the mix in the library entry
    (again,) = Library().entries()
    window.show_entry(again)
    assert window.mixer.practice.loop == loop
    assert window.mixer.practice.rate == Rate(0.95, 1.0)
    assert window.practice.bar.speed.value() == 95 and window.practice.bar.pitch.value() == 1
    assert window.mixer.gains.tolist() == [0, 1, 0, 0, 0]


def test_export_starts_from_the_current_mix_and_offers_the_rate(shown, qtbot, monkeypatch,  # type: ignore[no-untyped-def]
                                                                tmp_path: Path) -> None:
    window, _ = shown
    seen: list[tuple[bool, bool, str]] = []

    def answer(dialog: ExportDialog) -> int:
        seen.append((dialog.mix.isChecked(), dialog.at_rate.isChecked(),
                     dialog.at_rate.text()))
        return ExportDialog.DialogCode.Rejected

    monkeypatch.setattr(ExportDialog, "exec", answer)
    window.export_action.trigger()
    assert seen[-1][:2] == (False, False)  # nothing muted or soloed: all stems
    qtbot.keyClick(window, Qt.Key.Key_3, Qt.KeyboardModifier.ShiftModifier)  # mute "other"
    window.practice.bar.speed.setValue(80)
    window.export_action.trigger()
    assert seen[-1] == (True, True, "At the practice speed and pitch (80 %)")


def test_separate_again_with_another_model(shown, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    window, entry = shown
    added: list[tuple[list[Path], str, bool]] = []
    def add(paths: list[Path], key: ModelKey, two: bool) -> list[object]:
        added.append((list(paths), key.name, two))
        return []

    monkeypatch.setattr(window.queue, "add", add)
    window.library_view.separateRequested.emit(entry, "htdemucs_ft")
    assert added == []  # its song file (/music/Blue Train.wav) is not there
    assert "is not there any more" in window.statusBar().currentMessage()
    song = Path(entry.folder) / "song.wav"
    song.write_bytes(b"")
    entry.source = str(song)
    window.library_view.separateRequested.emit(entry, "htdemucs_ft")
    assert added == [([song], "htdemucs_ft", False)]


def test_fast_quality_from_the_menu_reaches_the_engine(window, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import engine.pipeline
    from app.protocol import build

    separation = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Separation")
    quality = next(a.menu() for a in separation.actions() if a.text() == "Quality")
    quality.aboutToShow.emit()
    fast = next(a for a in quality.actions() if a.data() == "fast")
    fast.trigger()
    assert window.settings.quality == "fast"
    key = window.model_key()
    assert key.quality == "fast"
    got: dict[str, object] = {}
    monkeypatch.setattr(engine.pipeline, "build_separator",
                        lambda name, **kw: got.update(name=name, **kw))
    build(key)  # what the worker process runs for a queued song
    assert got["quality"] == "fast" and got["name"] == key.name


def test_ctrl_plus_zooms(shown) -> None:  # type: ignore[no-untyped-def]
    window, _ = shown
    keys = [k.toString(QKeySequence.SequenceFormat.PortableText)
            for k in window.zoom_in_action.shortcuts()]
    assert "Ctrl++" in keys and "Ctrl+=" in keys
    before = window.track_view.timeline.frames_per_px
    window.zoom_in_action.trigger()
    assert window.track_view.timeline.frames_per_px < before


def test_at_800_by_500_the_sidebar_folds_and_export_stays_on_the_toolbar(shown, qtbot) -> None:  # type: ignore[no-untyped-def]
    window, _ = shown
    assert window.splitter.sizes()[0] > 0
    window.resize(800, 500)
    qtbot.waitUntil(lambda: window.splitter.sizes()[0] == 0, timeout=2000)
    assert window.track_view.width() > 700  # the timeline has the window
    bar = window.toolbar
    for action in (window.export_action, window.zoom_in_action, window.open_action):
        button = bar.widgetForAction(action)
        assert button is not None and button.isVisible()
        assert button.geometry().right() <= bar.width()
    assert window.two_stems_box.text() == "2 stems"
    window.responsive.sidebar_action.trigger()  # the person opens it again: it stays
    assert window.splitter.sizes()[0] > 0
    window.resize(820, 500)
    assert window.splitter.sizes()[0] > 0
    window.resize(1200, 760)
    assert window.two_stems_box.text() == "Vocals + instrumental only"
    assert np.all(np.asarray(window.splitter.sizes()) > 0)


def test_typing_in_the_library_search_does_not_trigger_the_keys(shown, qtbot) -> None:  # type: ignore[no-untyped-def]
    window, _ = shown
    window.sidebar.setCurrentWidget(window.library_panel)
    search = window.library_panel.search
    search.setFocus()
    qtbot.waitUntil(search.hasFocus, timeout=2000)
    qtbot.keyClicks(search, "io1=")
    assert search.text() == "io1="
    assert window.mixer.practice.loop is None and window.mixer.practice.rate.identity
    assert window.mixer.gains.tolist() == [1, 1, 1, 1, 0]
