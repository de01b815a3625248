"""A song's mix (mute, solo, volume, loop, speed, pitch) kept in its library entry."""

from __future__ import annotations

import json
from pathlib import Path

from app.library import Library, LibraryEntry
from app.practice import Loop
from app.songmix import LaneMix, SongMix
from app.stretch import Rate
from app.track import make_lanes
from tests.app.helpers import SOURCES, make_entry, stems_audio


def test_song_mix_survives_the_library_entry_written_atomically(tmp_path: Path) -> None:
    library = Library(tmp_path / "lib")
    entry = make_entry(library, "Solo", stems_audio(44100))
    mix = SongMix(lanes={"drums": LaneMix(volume=40, mute=True), "vocals": LaneMix(solo=True)},
                  loop=(1000, 30000), rate=Rate(0.75, -2.0))
    entry.song_mix = mix.to_json()
    entry.save()
    (again,) = Library(tmp_path / "lib").entries()
    assert SongMix.from_json(again.song_mix) == mix
    assert again.title == "Solo" and again.complete
    assert not list(entry.folder.glob("*.tmp*"))  # written through a temporary name
    practice = mix.practice(44100)
    assert practice.loop == Loop(1000, 30000) and practice.rate == Rate(0.75, -2.0)


def test_an_entry_from_before_song_mixes_loads_with_the_default_mix(tmp_path: Path) -> None:
    library = Library(tmp_path / "lib")
    entry = make_entry(library, "Old", stems_audio(44100))
    info = json.loads((entry.folder / "entry.json").read_text())
    del info["song_mix"]
    (entry.folder / "entry.json").write_text(json.dumps(info))
    loaded = LibraryEntry.load(entry.folder)
    mix = SongMix.from_json(loaded.song_mix)
    lanes = make_lanes(list(SOURCES), False)
    assert [mix.lane(x) for x in lanes] == [LaneMix()] * 4 + [LaneMix(mute=True)]
    assert not mix.shaped(lanes) and mix.practice(44100).rate.identity


def test_values_that_do_not_fit_fall_back_one_by_one() -> None:
    mix = SongMix.from_json({"lanes": {"bass": {"volume": 250, "mute": "yes", "solo": True},
                                       "drums": 7},
                             "loop": [5, "x"], "speed": 9.0, "semitones": float("nan")})
    assert mix.lanes == {"bass": LaneMix(volume=100, solo=True), "drums": LaneMix()}
    assert mix.loop is None and mix.rate == Rate(1.5, 0.0)  # clamped to 150 %
    assert SongMix.from_json(None) == SongMix() == SongMix.from_json([1, 2])


def test_shaped_means_muted_or_soloed_otherwise_than_by_default() -> None:
    lanes = make_lanes(list(SOURCES), False)
    assert SongMix(lanes={"bass": LaneMix(volume=10)}).shaped(lanes) is False
    assert SongMix(lanes={"bass": LaneMix(mute=True)}).shaped(lanes)
    assert SongMix(lanes={"mix": LaneMix(mute=False)}).shaped(lanes)
    assert SongMix(lanes={"vocals": LaneMix(solo=True)}).shaped(lanes)


def test_keeper_restores_the_mix_when_the_song_is_reopened(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtWidgets import QWidget

    from app.mixer import Mixer
    from app.practicebar import PracticeController
    from app.songstate import SongMixKeeper
    from app.trackview import TrackView

    library = Library(tmp_path / "lib")
    make_entry(library, "Solo", stems_audio(5 * 44100))
    window = QWidget()
    qtbot.addWidget(window)
    view, mixer = TrackView(window), Mixer()
    view.gainsChanged.connect(mixer.set_gains)
    practice = PracticeController(view.timeline, mixer, window)
    keeper = SongMixKeeper(view, practice)

    def open_song() -> None:
        (entry,) = library.entries()
        track = entry.open_track()
        view.set_track(track)
        mixer.load(track, list(view.gains()))
        keeper.opened(track, [entry])

    open_song()
    assert keeper.current() == SongMix(lanes={k: LaneMix(mute=k == "mix") for k in
                                              ("drums", "bass", "other", "vocals", "mix")})
    view.toggle(3, solo=True)
    view.headers[1].volume.setValue(50)
    view.timeline.loopRequested.emit(3 * 44100, 44100)  # dragged right to left on the ruler
    practice.bar.speed.setValue(80)
    practice.bar.pitch.setValue(-2)
    assert keeper.timer.isActive()  # saved a second after the last change...
    kept = keeper.current()
    assert keeper.shaped()
    keeper.closed()  # ...or at once when the song closes
    assert mixer.track is not None
    mixer.track.close()
    open_song()
    assert keeper.current() == kept
    assert kept.loop == (44100, 3 * 44100) and kept.rate == Rate(0.8, -2.0)
    assert mixer.practice.loop == Loop(44100, 3 * 44100)
    assert mixer.practice.rate == Rate(0.8, -2.0)
    assert view.timeline.loop == (44100, 3 * 44100)
    assert mixer.gains.tolist() == [0, 0, 0, 1, 0]
    assert mixer.track is not None
    mixer.track.close()
