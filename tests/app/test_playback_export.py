"""The track view's mixer controls, keyboard transport, output device trouble, and export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

import app.mainwindow
from app.export import ExportDialog
from app.library import Library
from app.reveal import reveal_title
from app.track import slider_gain
from tests.app.helpers import RATE, make_entry, run_export

SECONDS = 3


def test_mute_solo_and_volume_set_the_mixers_gains(shown, qtbot) -> None:  # type: ignore[no-untyped-def]
    window, _ = shown
    headers = window.track_view.headers
    assert [h.name.text() for h in headers][-1] == "Original mix"
    assert window.mixer.gains.tolist() == [1, 1, 1, 1, 0]  # the original starts muted
    qtbot.mouseClick(headers[0].mute, Qt.MouseButton.LeftButton)  # mute drums
    assert window.mixer.gains.tolist() == [0, 1, 1, 1, 0]
    headers[2].volume.setValue(50)  # other at half travel
    assert window.mixer.gains.tolist() == [0, 1, slider_gain(50), 1, 0]
    qtbot.mouseClick(headers[3].solo, Qt.MouseButton.LeftButton)  # solo vocals: karaoke check
    assert window.mixer.gains.tolist() == [0, 0, 0, 1, 0]
    qtbot.mouseClick(headers[4].solo, Qt.MouseButton.LeftButton)  # and the original with it
    assert window.mixer.gains.tolist() == [0, 0, 0, 1, 1]
    assert not window.track_view.waves[0].audible and window.track_view.waves[3].audible
    qtbot.mouseClick(headers[3].solo, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(headers[4].solo, Qt.MouseButton.LeftButton)
    assert window.mixer.gains.tolist() == [0, 1, slider_gain(50), 1, 0]


def test_keyboard_transport_plays_seeks_and_shows_the_time(shown, qtbot) -> None:  # type: ignore[no-untyped-def]
    window, _ = shown
    window.activateWindow()
    qtbot.waitUntil(lambda: window.isActiveWindow(), timeout=2000)
    assert window.time_label.text().startswith("0:00.0 / 0:03.0")
    qtbot.keyClick(window, Qt.Key.Key_Space)
    assert window.mixer.playing and window.play_action.text() == "Pause"
    # no audio device on this machine: playback runs silently and says so
    assert window.output.silent and "silent" in window.statusBar().currentMessage()
    qtbot.waitUntil(lambda: window.mixer.position > RATE // 10, timeout=5000)
    qtbot.waitUntil(lambda: window.time_label.text() != "0:00.0 / 0:03.0", timeout=2000)
    qtbot.keyClick(window, Qt.Key.Key_Space)
    assert not window.mixer.playing
    qtbot.keyClick(window, Qt.Key.Key_Right)
    assert window.mixer.position == SECONDS * RATE  # +5 s, clamped to the end
    qtbot.keyClick(window, Qt.Key.Key_Left, Qt.KeyboardModifier.ShiftModifier)
    assert window.mixer.position == (SECONDS - 1) * RATE
    qtbot.keyClick(window, Qt.Key.Key_Home)
    assert window.mixer.position == 0
    qtbot.waitUntil(lambda: window.track_view.timeline.playhead == 0, timeout=2000)


def test_clicking_a_lane_seeks_and_wheel_zooms(shown, qtbot) -> None:  # type: ignore[no-untyped-def]
    window, _ = shown
    wave = window.track_view.waves[1]
    tl = window.track_view.timeline
    qtbot.mouseClick(wave, Qt.MouseButton.LeftButton, pos=wave.rect().center())
    expected = tl.frame_at(wave.rect().center().x())
    assert window.mixer.position == expected and tl.playhead == expected
    fitted = tl.frames_per_px
    tl.zoom(4.0, anchor_px=wave.width() / 2)
    assert tl.frames_per_px == pytest.approx(fitted / 4)
    assert window.track_view.scroll_bar.maximum() > 0  # now there is something to scroll
    window.track_view.scroll_bar.setValue(window.track_view.scroll_bar.maximum())
    assert tl.start + tl.visible_frames == pytest.approx(tl.frames, abs=tl.frames_per_px)


def test_an_output_device_that_disappears_pauses_with_a_message(shown, qtbot) -> None:  # type: ignore[no-untyped-def]
    window, _ = shown

    class VanishedStream:
        def abort(self) -> None:
            raise OSError("device gone")

        def close(self) -> None:
            pass

    window.play()
    assert window.mixer.playing
    window.output.clock.close()  # pretend a real device was playing...
    window.output.clock = None
    window.output.stream = VanishedStream()
    window.output._finished = True  # ...and PortAudio finished the stream on its own
    qtbot.waitUntil(lambda: not window.mixer.playing, timeout=2000)
    assert "went away" in window.statusBar().currentMessage()
    assert not window.output.is_open
    window.play()  # the next play opens an output again (here: the silent clock)
    assert window.mixer.playing and window.output.is_open


def test_export_the_current_mix_equals_what_is_heard(shown, stems, tmp_path, monkeypatch,  # type: ignore[no-untyped-def]
                                                     qtbot) -> None:
    window, _ = shown
    headers = window.track_view.headers
    qtbot.mouseClick(headers[3].mute, Qt.MouseButton.LeftButton)  # no vocals
    headers[1].volume.setValue(50)

    def choose(dialog: ExportDialog) -> None:
        dialog.mix.setChecked(True)
        dialog.container.setCurrentIndex(dialog.container.findData("wav"))
        dialog.depth_box.setCurrentIndex(dialog.depth_box.findData("float32"))
        dialog.folder.setText(str(tmp_path / "out"))

    [path] = run_export(window, monkeypatch, qtbot, choose)
    assert path == tmp_path / "out" / "Song (no vocals).wav"
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    expected = (stems["drums"] + np.float32(0.25) * stems["bass"] + stems["other"]).T
    assert rate == RATE and audio.shape == expected.shape
    np.testing.assert_allclose(audio, expected, atol=1e-6)
    revealed: list[Path] = []
    monkeypatch.setattr(app.mainwindow, "reveal", revealed.append)
    box = next(b for b in window.findChildren(QMessageBox) if b.isVisible())
    reveal_button = next(b for b in box.buttons() if b.text() == reveal_title())
    qtbot.mouseClick(reveal_button, Qt.MouseButton.LeftButton)
    assert revealed == [path]


def test_export_selected_stems_in_24_bit_flac(shown, stems, tmp_path, monkeypatch,  # type: ignore[no-untyped-def]
                                              qtbot) -> None:
    window, _ = shown

    def choose(dialog: ExportDialog) -> None:
        dialog.checks[0].setChecked(False)  # drums off: "selected stems" is chosen by it
        dialog.checks[2].setChecked(False)
        dialog.container.setCurrentIndex(dialog.container.findData("flac"))
        dialog.depth_box.setCurrentIndex(dialog.depth_box.findData("int24"))
        dialog.folder.setText(str(tmp_path))

    paths = run_export(window, monkeypatch, qtbot, choose)
    assert [p.name for p in paths] == ["bass.flac", "vocals.flac"]
    for path in paths:
        info = sf.info(path)
        assert info.subtype == "PCM_24" and info.frames == SECONDS * RATE
        audio, _ = sf.read(path, dtype="float32", always_2d=True)
        np.testing.assert_allclose(audio, stems[path.stem].T, atol=2.0 / 2**23)


def test_two_stem_mode_has_vocals_and_instrumental_lanes(make_window, stems, tmp_path,  # type: ignore[no-untyped-def]
                                                         monkeypatch, qtbot) -> None:
    entry = make_entry(Library(), "Duet", stems, two_stems=True)
    window = make_window()
    window.show_entry(entry)
    assert [h.name.text() for h in window.track_view.headers] == [
        "Vocals", "Instrumental", "Original mix"]

    def choose(dialog: ExportDialog) -> None:
        dialog.all.setChecked(True)
        dialog.container.setCurrentIndex(dialog.container.findData("wav"))
        dialog.depth_box.setCurrentIndex(dialog.depth_box.findData("float32"))
        dialog.folder.setText(str(tmp_path))

    paths = run_export(window, monkeypatch, qtbot, choose)
    assert [p.name for p in paths] == ["vocals.wav", "instrumental.wav"]
    instrumental, _ = sf.read(paths[1], dtype="float32", always_2d=True)
    np.testing.assert_allclose(instrumental, (stems["drums"] + stems["bass"] + stems["other"]).T,
                               atol=1e-6)


@pytest.mark.parametrize("answer", ["Replace", "Keep Both", "Cancel"])
def test_exporting_over_existing_files_asks_first(shown, stems, tmp_path, monkeypatch,  # type: ignore[no-untyped-def]
                                                 asked, qtbot, answer: str) -> None:
    window, _ = shown
    theirs = {"bass.wav": b"the person's own bass", "vocals.wav": b"their vocals",
              "vocals (2).wav": b"their second vocals"}
    for name, data in theirs.items():
        (tmp_path / name).write_bytes(data)
    asked.answers["Replace existing files?"] = answer

    def choose(dialog: ExportDialog) -> None:
        dialog.all.setChecked(True)
        dialog.container.setCurrentIndex(dialog.container.findData("wav"))
        dialog.depth_box.setCurrentIndex(dialog.depth_box.findData("float32"))
        dialog.folder.setText(str(tmp_path))

    if answer == "Cancel":
        def accept(dialog: ExportDialog) -> int:
            choose(dialog)
            return ExportDialog.DialogCode.Accepted

        monkeypatch.setattr(ExportDialog, "exec", accept)
        window.export_action.trigger()
        qtbot.wait(300)
        assert not window.exporter.busy and window.export_action.isEnabled()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs)
        written: list[Path] = []
    else:
        written = run_export(window, monkeypatch, qtbot, choose)
        assert window.statusBar().currentMessage() == f"Exported 4 file(s) to {tmp_path}."
    [(title, text, buttons)] = asked.questions
    assert buttons == ["Replace", "Keep Both", "Cancel"]
    assert "“bass.wav”, “vocals.wav” already exist" in text and "“bass (2).wav”" in text
    if answer == "Replace":
        assert [p.name for p in written] == ["drums.wav", "bass.wav", "other.wav", "vocals.wav"]
        assert (tmp_path / "vocals (2).wav").read_bytes() == theirs["vocals (2).wav"]
    if answer == "Keep Both":
        assert [p.name for p in written] == ["drums.wav", "bass (2).wav", "other.wav",
                                             "vocals (3).wav"]
        for name, data in theirs.items():
            assert (tmp_path / name).read_bytes() == data
    for path in written:
        audio, _ = sf.read(path, dtype="float32", always_2d=True)
        np.testing.assert_allclose(audio, stems[path.stem.split(" (")[0]].T, atol=1e-6)
