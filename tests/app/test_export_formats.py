"""Export to AAC, ALAC and NI Stems from the app; the bit rate and the Traktor mapping in the
dialog; Replace / Keep Both / Cancel for every new kind of file; a lane dragged out."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from app.export import ExportDialog, drag_export, keep_both, plan_stem_mp4
from engine.stemmp4 import default_stem_map
from engine.writers import OutputFormat
from tests.app.helpers import RATE, run_export
from tests.engine.test_m4a import snr_db
from tests.engine.test_stemmp4 import walk

SECONDS = 2


def _decode(path: Path) -> list[np.ndarray]:
    """Every audio stream, cut at its declared length (engine.m4a's rule)."""
    out = []
    with av.open(str(path)) as container:
        for stream in container.streams.audio:
            assert stream.duration is not None and stream.time_base is not None
            frames = round(stream.duration * stream.time_base * stream.rate)
            samples = np.concatenate([f.to_ndarray() for f in container.decode(stream)], axis=1)
            out.append(samples[:, :frames])
            container.seek(0)
    return out


def _choose_kind(dialog: ExportDialog, kind: str, folder: Path) -> None:
    dialog.container.setCurrentIndex(dialog.container.findData(kind))
    dialog.folder.setText(str(folder))


def test_ni_stems_from_the_dialog_with_an_edited_mapping(shown, stems, tmp_path, monkeypatch,  # type: ignore[no-untyped-def]
                                                          qtbot) -> None:
    window, _ = shown

    def choose(dialog: ExportDialog) -> None:
        _choose_kind(dialog, "stem-alac", tmp_path)
        assert dialog.stem_map.text() == "drums;bass;other;vocals"  # a 4-stem model: 1:1
        assert not dialog.all.isEnabled() and dialog.stem_map.isEnabled()
        assert not dialog.bitrate.isEnabled()  # ALAC is lossless
        dialog.stem_map.setText("drums;bass;Keys=other;vocals")
        assert "3 Keys = other" in dialog.map_hint.text()

    [path] = run_export(window, monkeypatch, qtbot, choose)
    assert path == tmp_path / "Song.stem.mp4"
    boxes = walk(path.read_bytes())
    meta = json.loads(next(b[3] for b in boxes if b[0] == "moov/udta/stem"))
    assert [s["name"] for s in meta["stems"]] == ["Drums", "Bass", "Keys", "Vocals"]
    master, *parts = _decode(path)
    mix = sum(stems.values())
    assert isinstance(mix, np.ndarray)
    assert master.dtype == np.int32  # 24-bit ALAC: the settings' default depth
    for got, want in zip([master, *parts], [mix, *(stems[s] for s in
                                                   ("drums", "bass", "other", "vocals"))],
                         strict=True):
        assert got.shape == (2, SECONDS * RATE)
        np.testing.assert_allclose((got >> 8) / 2.0**23, want, atol=2.0**-23)


def test_a_bad_mapping_keeps_the_dialog_open(shown, settings) -> None:  # type: ignore[no-untyped-def]
    window, _ = shown
    assert window.track is not None
    dialog = ExportDialog(window.track, [1.0] * 5, [], settings, window)
    dialog.container.setCurrentIndex(dialog.container.findData("stem-aac"))
    dialog.stem_map.setText("drums;bass;other+drums;vocals")
    assert "puts drums in two stems" in dialog.map_hint.text()
    dialog.accept()
    assert dialog.result() != ExportDialog.DialogCode.Accepted
    dialog.stem_map.setText("drums;bass;other;vocals")
    dialog.accept()
    assert dialog.result() == ExportDialog.DialogCode.Accepted


def test_aac_at_the_bit_rate_chosen_in_the_dialog(shown, stems, tmp_path, monkeypatch,  # type: ignore[no-untyped-def]
                                                  qtbot) -> None:
    window, _ = shown

    def choose(dialog: ExportDialog) -> None:
        _choose_kind(dialog, "aac", tmp_path)
        assert dialog.bitrate.isEnabled() and not dialog.depth_box.isEnabled()
        dialog.bitrate.setCurrentIndex(dialog.bitrate.findData("128"))
        dialog.checks[0].setChecked(False)
        dialog.checks[2].setChecked(False)
        dialog.checks[3].setChecked(False)  # bass only

    [path] = run_export(window, monkeypatch, qtbot, choose)
    assert path == tmp_path / "bass.m4a"
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac" and stream.rate == RATE
        kbps = path.stat().st_size * 8 / SECONDS / 1000
    assert 90 < kbps < 160  # 128 kbit/s asked (256 would be ~2x)
    [samples] = _decode(path)
    assert samples.shape == (2, SECONDS * RATE)
    # the right stem: these lanes are mostly white noise, AAC's worst case at 128 kbit/s
    # (about 10 dB here; engine/test_m4a.py bounds the quality on music-like signals)
    assert snr_db(stems["bass"], samples) > 6 and snr_db(stems["drums"], samples) < 1


@pytest.mark.parametrize("answer", ["Replace", "Keep Both", "Cancel"])
def test_replace_keep_both_cancel_for_an_ni_stems_file(shown, tmp_path, monkeypatch, asked,  # type: ignore[no-untyped-def]
                                                        qtbot, answer: str) -> None:
    window, _ = shown
    theirs = tmp_path / "Song.stem.mp4"
    theirs.write_bytes(b"the DJ's own stem file")
    asked.answers["Replace existing files?"] = answer

    def choose(dialog: ExportDialog) -> None:
        _choose_kind(dialog, "stem-aac", tmp_path)

    if answer == "Cancel":
        def accept(dialog: ExportDialog) -> int:
            choose(dialog)
            return ExportDialog.DialogCode.Accepted

        monkeypatch.setattr(ExportDialog, "exec", accept)
        window.export_action.trigger()
        qtbot.wait(300)
        assert not window.exporter.busy and [p.name for p in tmp_path.iterdir()] == [theirs.name]
    else:
        [path] = run_export(window, monkeypatch, qtbot, choose)
        expected = theirs if answer == "Replace" else tmp_path / "Song (2).stem.mp4"
        assert path == expected and path.read_bytes()[4:12] == b"ftypM4A "
        if answer == "Keep Both":
            assert theirs.read_bytes() == b"the DJ's own stem file"
    [(_, text, buttons)] = asked.questions
    assert buttons == ["Replace", "Keep Both", "Cancel"]
    assert "“Song.stem.mp4” already exists" in text and "“Song (2).stem.mp4”" in text


def test_keep_both_numbers_every_new_kind_of_name(tmp_path: Path, shown) -> None:  # type: ignore[no-untyped-def]
    window, _ = shown
    (tmp_path / "vocals.m4a").write_bytes(b"x")
    (tmp_path / "Song.stem.mp4").write_bytes(b"x")
    ni = plan_stem_mp4(window.track, tmp_path, default_stem_map(["drums", "bass", "other",
                                                                  "vocals"]))
    from app.export import ExportFile
    files = keep_both([ExportFile(tmp_path / "vocals.m4a", (3,), (1.0,)), ni])
    assert [f.path.name for f in files] == ["vocals (2).m4a", "Song (2).stem.mp4"]
    assert files[1].stem_map == ni.stem_map


def test_dragging_a_lane_out_writes_it_and_offers_its_url(shown, stems, tmp_path) -> None:  # type: ignore[no-untyped-def]
    window, entry = shown
    track = entry.open_track()
    try:
        mime = drag_export(track, 1, OutputFormat("alac", "int24"), tmp_path / "drags")
    finally:
        track.close()
    [url] = mime.urls()
    path = Path(url.toLocalFile())
    assert url.isLocalFile() and path.name == "Song - Bass.m4a"
    assert path.parent.parent == tmp_path / "drags"
    [samples] = _decode(path)
    np.testing.assert_allclose((samples >> 8) / 2.0**23, stems["bass"], atol=2.0**-23)
    made = path.stat().st_mtime_ns
    track = entry.open_track()
    try:  # dragged again: the same file, not written twice
        [again] = drag_export(track, 1, OutputFormat("alac", "int24"), tmp_path / "drags").urls()
        [other] = drag_export(track, 1, OutputFormat("wav"), tmp_path / "drags").urls()
    finally:
        track.close()
    assert Path(again.toLocalFile()) == path and path.stat().st_mtime_ns == made
    assert Path(other.toLocalFile()).name == "Song - Bass.wav"


def test_preferences_keep_an_aac_bit_rate_apart_from_mp3s(settings, qtbot) -> None:  # type: ignore[no-untyped-def]
    from app.preferences import PreferencesDialog

    settings.mp3_bitrate = 192
    dialog = PreferencesDialog(settings)
    qtbot.addWidget(dialog)
    dialog.container.setCurrentIndex(dialog.container.findData("mp3"))
    assert dialog.bitrate.currentData() == "192" and dialog.bitrate.findData("320") >= 0
    dialog.container.setCurrentIndex(dialog.container.findData("aac"))
    assert dialog.bitrate.currentData() == "256"  # AAC's default, NI's usual
    assert dialog.bitrate.findData("64") >= 0 and not dialog.depth_box.isEnabled()
    dialog.bitrate.setCurrentIndex(dialog.bitrate.findData("160"))
    dialog.accept()
    fmt = settings.output_format()
    assert (fmt.container, fmt.aac_bitrate, fmt.ext) == ("aac", 160, "m4a")
    assert settings.mp3_bitrate == 192


def test_a_lane_header_drag_starts_a_copy_drag_of_the_written_file(shown, tmp_path, qtbot,  # type: ignore[no-untyped-def]
                                                                   monkeypatch) -> None:
    from PySide6.QtCore import QPoint, Qt
    from PySide6.QtGui import QDrag
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    from app.trackview import TrackView

    _, entry = shown
    track = entry.open_track()
    view = TrackView()
    qtbot.addWidget(view)
    view.set_track(track)
    view.show()
    asked: list[int] = []
    view.drag_source = lambda lane: asked.append(lane) or drag_export(  # type: ignore[func-returns-value]
        track, lane, OutputFormat("wav"), tmp_path / "drags")
    dropped: list[tuple[list[str], Qt.DropAction]] = []

    def fake_exec(drag: QDrag, action: Qt.DropAction) -> Qt.DropAction:  # no real drag loop
        dropped.append(([u.toLocalFile() for u in drag.mimeData().urls()], action))
        return action

    monkeypatch.setattr(QDrag, "exec", fake_exec)
    header = view.headers[2]
    start = header.name.geometry().center()
    QTest.mousePress(header, Qt.MouseButton.LeftButton, pos=start)
    QTest.mouseMove(header, start + QPoint(QApplication.startDragDistance() + 5, 0))
    QTest.mouseRelease(header, Qt.MouseButton.LeftButton, pos=start)
    assert asked == [2]
    [([file], action)] = dropped
    assert action == Qt.DropAction.CopyAction and Path(file).name == "Song - Other.wav"
    assert Path(file).stat().st_size > 2 * SECONDS * RATE * 2  # the whole stem, written
    requested: list[int] = []
    view.laneExportRequested.connect(requested.append)
    [action_item] = view.headers[1].context_menu().actions()
    assert action_item.text() == "Export “Bass”…"
    action_item.trigger()
    assert requested == [1] and view.headers[4].context_menu().actions() == []  # the original
    view.set_track(None)
    track.close()


def test_right_click_exports_that_stem_alone(shown, stems, tmp_path, monkeypatch, qtbot) -> None:  # type: ignore[no-untyped-def]
    window, _ = shown

    def answer(dialog: ExportDialog) -> int:
        assert dialog.some.isChecked()
        assert [i for i, box in dialog.checks.items() if box.isChecked()] == [3]
        _choose_kind(dialog, "flac", tmp_path)
        return ExportDialog.DialogCode.Accepted

    monkeypatch.setattr(ExportDialog, "exec", answer)
    [action] = window.track_view.headers[3].context_menu().actions()
    with qtbot.waitSignal(window.exporter.finished, timeout=30000) as finished:
        action.trigger()
    assert [p.name for p in finished.args[0]] == ["vocals.flac"]


def test_dragging_from_the_window_uses_the_preferences_format(shown, settings, tmp_path,  # type: ignore[no-untyped-def]
                                                              monkeypatch) -> None:
    import tempfile

    window, _ = shown
    window.settings.container = "aac"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mime = window.track_view.headers[0].drag_source()
    assert mime is not None
    [url] = mime.urls()
    path = Path(url.toLocalFile())
    assert path.name == "Song - Drums.m4a" and tmp_path in path.parents
    with av.open(str(path)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
