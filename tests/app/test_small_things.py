"""The small things a musician expects: library search and sort, the queue's total time
left, volume sliders that jump to a click and show dB, a song's lane mix kept and restored."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import soundfile as sf
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest

from app.library import Library
from app.protocol import ModelKey
from app.queue import QueueItem, State
from app.queue_eta import total_eta
from app.sidebar import LibraryPanel, LibraryView
from app.songmix import LaneMix, SongMix
from app.trackview import TrackView
from tests.app.helpers import growing_track, make_entry, stems_audio


def test_library_search_and_sort(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    library = Library(tmp_path / "lib")
    for title, seconds in (("Blue Train", 2), ("Autumn Leaves", 1), ("So What", 3)):
        make_entry(library, title, stems_audio(44100 * seconds))
        time.sleep(0.01)
    view = LibraryView()
    panel = LibraryPanel(view)
    qtbot.addWidget(panel)
    view.set_entries(library.entries())
    titles = lambda: [e.title for i, e in enumerate(view.entries)  # noqa: E731
                      if not view.item(i).isHidden()]
    assert titles() == ["So What", "Autumn Leaves", "Blue Train"]  # newest first
    panel.sort.setCurrentIndex(panel.sort.findData("title"))
    assert titles() == ["Autumn Leaves", "Blue Train", "So What"]
    panel.sort.setCurrentIndex(panel.sort.findData("length"))
    assert titles() == ["So What", "Blue Train", "Autumn Leaves"]
    panel.search.setText("train")
    assert titles() == ["Blue Train"]
    view.set_entries(library.entries())  # a refresh keeps the search and the sort
    assert titles() == ["Blue Train"]
    panel.search.setText("")
    assert len(titles()) == 3


def song(path: Path, seconds: float) -> Path:
    sf.write(path, np.zeros((int(seconds * 44100), 2), np.float32), 44100)
    return path


def test_total_eta_adds_the_running_eta_and_the_waiting_songs(tmp_path: Path) -> None:
    key = ModelKey("htdemucs")
    running = QueueItem(song(tmp_path / "a.wav", 100), key, False, state=State.SEPARATING,
                        stage="separating", fraction=0.5, eta_s=30.0, started=0.0)
    waiting = QueueItem(song(tmp_path / "b.wav", 200), key, False)
    done = QueueItem(song(tmp_path / "c.wav", 50), key, False, state=State.DONE, seconds=25)
    # the running song: 30 s so far and 30 s to go for 100 s of audio -> 0.6 s a second
    assert total_eta([running, waiting, done], now=30.0) == 30.0 + 0.6 * 200
    # nothing running: the pace of the finished song, 0.5 s a second
    assert total_eta([done, waiting]) == 0.5 * 200
    assert total_eta([waiting]) is None  # no pace measured yet


def test_volume_slider_jumps_to_a_click_and_shows_decibels(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    track, _ = growing_track(tmp_path, stems_audio(44100), ready=44100)
    view = TrackView()
    qtbot.addWidget(view)
    view.resize(900, 500)
    view.show()
    view.set_track(track)
    header = view.headers[0]
    slider = header.volume
    assert header.db.text() == "+0.0 dB"
    with qtbot.waitSignal(view.gainsChanged):
        QTest.mouseClick(slider, Qt.MouseButton.LeftButton, pos=QPoint(slider.width() // 4,
                                                                       slider.height() // 2))
    assert 15 <= slider.value() <= 35  # a quarter along the track, not one page step down
    assert header.db.text() == f"{20 * np.log10((slider.value() / 100) ** 2):+.1f} dB" \
        .replace("-", "−")
    track.close()


def test_lane_mix_round_trip_and_solo_mute_toggles(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    track, _ = growing_track(tmp_path, stems_audio(44100), ready=44100)
    view = TrackView()
    qtbot.addWidget(view)
    view.set_track(track)
    mix = SongMix(lanes={"drums": LaneMix(40, True, False), "vocals": LaneMix(100, False, True)})
    with qtbot.waitSignal(view.gainsChanged) as got:
        view.restore_mix(mix)
    assert got.args[0].tolist() == [0, 0, 0, 1, 0]  # vocals soloed
    assert view.lane_mix()["drums"] == LaneMix(40, True, False)
    assert view.lane_mix()["mix"] == LaneMix(100, True, False)  # the original, by default
    view.toggle(3, solo=True)  # vocals solo off
    view.toggle(1, solo=False)  # bass muted
    assert view.gains().tolist() == [0, 0, 1, 1, 0]
    track.close()
