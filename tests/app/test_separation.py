"""Dropping songs on the window: separation with the tiny model, lanes, failures, cancel,
the library, the first-run model dialog, and the GUI thread's responsiveness."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

import engine.download
from app.library import Library
from app.queue import State
from engine.stembuffers import StemBuffers, read_index
from tests.app.gui import StallWatch, drop_files, painted_pixels, wait_for
from tests.engine.audio_files import sine_mix, write_wav


def test_drop_separates_and_fills_the_lanes_chunk_by_chunk(window, settings, model_repo,  # type: ignore[no-untyped-def]
                                                            song, qtbot) -> None:
    settings.segment = 1.5  # several chunks in four seconds
    readies: list[int] = []
    window.track_view.timeline.readyChanged.connect(
        lambda: readies.append(window.track_view.timeline.ready))
    assert drop_files(window.drop_hint, [song])  # dropped on a child: the window takes it
    [item] = window.queue.items
    assert item.path == song and item.key.name == "htdemucs_6s"
    wait_for(qtbot, item, [State.SEPARATING, State.DONE])
    qtbot.waitUntil(lambda: window.track is not None, timeout=30000)
    wait_for(qtbot, item)
    assert item.state == State.DONE, item.message
    view = window.track_view
    qtbot.waitUntil(lambda: all(p.complete for p in view.peaks), timeout=10000)
    frames = window.track.frames
    assert frames == 4 * 44100
    # the lanes grew while the song separated: several ready marks on the way
    assert len([r for r in readies if 0 < r < frames]) >= 2, readies
    titles = [h.name.text() for h in view.headers]
    assert titles == ["Drums", "Bass", "Other", "Vocals", "Guitar", "Piano", "Original mix"]
    stems = StemBuffers.open(item.entry.stems_dir)
    for i, source in enumerate(stems.sources):  # the drawn peaks are the stems' own
        audio = stems.read(source, 0, frames)
        top = view.peaks[i].levels[-1]
        assert top[1].max() == pytest.approx(audio.max()) and top[0].min() == pytest.approx(
            audio.min())
        assert painted_pixels(view.waves[i].waveform_image()) > 100
    stems.close()
    assert painted_pixels(view.waves[-1].waveform_image()) > 100  # the original mix
    # kept in the library, with its peaks for an instant reopen
    assert [e.title for e in window.library.entries()] == ["song"]
    assert window.library_view.count() == 1
    qtbot.waitUntil(lambda: item.entry.peaks_path.exists(), timeout=5000)
    assert window.export_action.isEnabled()


def test_a_bad_file_shows_its_reason_and_the_next_one_still_runs(window, model_repo, song,  # type: ignore[no-untyped-def]
                                                                  tmp_path, qtbot) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio\n")
    assert drop_files(window, [bad, song])
    bad_item, good_item = window.queue.items
    wait_for(qtbot, bad_item)
    assert bad_item.state == State.FAILED
    assert "notes.wav" in bad_item.message
    row = window.queue_view.row_for(bad_item)
    assert row.status.text().startswith("Failed: ") and "notes.wav" in row.status.text()
    assert row.retry.isVisibleTo(row) and not row.cancel.isVisibleTo(row)
    wait_for(qtbot, good_item)
    assert good_item.state == State.DONE
    assert [e.title for e in window.library.entries()] == ["song"]  # no entry for the bad one


def test_cancel_keeps_the_finished_chunks_retry_resumes_and_remove_discards(  # type: ignore[no-untyped-def]
        window, settings, model_repo, song, qtbot) -> None:
    settings.segment = 1.5
    [item] = window.open_paths([song])
    qtbot.waitUntil(lambda: item.fraction > 0 and item.stage == "separating", timeout=30000)
    folder = item.entry.folder
    row = window.queue_view.row_for(item)
    qtbot.mouseClick(row.cancel, Qt.MouseButton.LeftButton)
    wait_for(qtbot, item)
    assert item.state == State.CANCELLED and window.track is None  # no longer shown
    kept = read_index(folder / "stems")
    assert kept is not None and not kept["complete"] and 0 < kept["ready_frames"]
    assert row.status.text() == f"Cancelled at {item.fraction:.0%}" and item.fraction > 0
    assert row.retry.isVisibleTo(row) and row.retry.toolTip().startswith("Resume from ")
    assert window.library.entries() == []
    qtbot.mouseClick(row.retry, Qt.MouseButton.LeftButton)  # continues where it stopped
    wait_for(qtbot, item)
    assert item.state == State.DONE and item.entry.folder == folder
    assert item.resumed_at == pytest.approx(kept["ready_frames"] / kept["frames"])
    assert [e.folder for e in window.library.entries()] == [folder]
    window.queue.remove(item)  # a finished song stays in the library
    assert folder.exists()
    [again] = window.open_paths([write_wav(song.with_name("b.wav"),
                                           sine_mix(4.0, 44100, amplitude=0.3), 44100)])
    qtbot.waitUntil(lambda: again.fraction > 0 and again.stage == "separating", timeout=30000)
    window.queue.cancel(again)
    wait_for(qtbot, again)
    other = again.entry.folder
    assert again.state == State.CANCELLED and other.exists()
    window.queue.remove(again)  # unfinished stems go with the item
    qtbot.waitUntil(lambda: not other.exists(), timeout=5000)


def test_the_gui_thread_never_stalls_during_a_separation(window, settings, model_repo,  # type: ignore[no-untyped-def]
                                                         tmp_path, qtbot) -> None:
    """A 10 ms timer on the GUI thread, from the drop (worker start, model load, decode,
    first lanes) to the end of a multi-chunk separation: no gap the app causes may exceed
    50 ms (see StallWatch for what is not the app's)."""
    settings.segment = 1.5
    path = write_wav(tmp_path / "long.wav", sine_mix(6.0, 44100, amplitude=0.4), 44100)
    watch = StallWatch()
    watch.start()
    qtbot.wait(50)
    [item] = window.open_paths([path])
    wait_for(qtbot, item)
    qtbot.wait(100)  # the last lanes' repaint
    watch.stop()
    assert item.state == State.DONE
    print(f"\nGUI thread: {len(watch.gaps)} ticks, worst gap {watch.worst * 1000:.1f} ms, "
          f"worst caused by the app {watch.worst_own * 1000:.1f} ms")
    assert len(watch.gaps) > 100
    assert watch.worst_own < 0.050


def test_finished_songs_reopen_from_the_library_and_delete_asks_first(  # type: ignore[no-untyped-def]
        make_window, qtbot, monkeypatch) -> None:
    from PySide6.QtWidgets import QMessageBox

    from tests.app.helpers import make_entry, stems_audio

    entry = make_entry(Library(), "Groove", stems_audio(3 * 44100))
    window = make_window()
    lib = window.library_view
    assert lib.count() == 1 and lib.item(0).text().startswith("Groove")
    rect = lib.visualItemRect(lib.item(0))
    qtbot.mouseClick(lib.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.track is not None and window.track.title == "Groove"
    assert window.queue.items == []  # nothing separates again
    assert [h.name.text() for h in window.track_view.headers] == [
        "Drums", "Bass", "Other", "Vocals", "Original mix"]
    qtbot.waitUntil(lambda: entry.peaks_path.exists(), timeout=10000)
    asked: list[str] = []

    def answer(reply):  # type: ignore[no-untyped-def]
        def question(parent, title, text, *args):  # type: ignore[no-untyped-def]
            asked.append(text)
            return reply
        return question

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Cancel))
    lib.deleteRequested.emit(entry)
    assert asked and "Groove" in asked[0]
    assert entry.folder.exists() and lib.count() == 1 and window.track is not None
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    lib.deleteRequested.emit(entry)
    assert lib.count() == 0 and window.track is None
    qtbot.waitUntil(lambda: not any(window.library.root.iterdir()), timeout=5000)


# --- the first-run dialog ------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def wrong_checkpoint_server() -> Iterator[str]:
    """Serves 1 KiB of zeros for any checkpoint name (not the 55 MB the catalogue expects)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "1024")
            self.end_headers()
            self.wfile.write(bytes(1024))

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _dialog_error(window, qtbot) -> str:  # type: ignore[no-untyped-def]
    qtbot.waitUntil(lambda: window.model_dialog is not None, timeout=5000)
    dialog = window.model_dialog
    qtbot.waitUntil(lambda: dialog.error.isVisibleTo(dialog), timeout=30000)
    assert dialog.retry.isVisibleTo(dialog) and dialog.folder.isVisibleTo(dialog)
    return dialog.error.text()


def test_first_run_without_network_says_so_and_offers_a_way_forward(  # type: ignore[no-untyped-def]
        window, song, qtbot, monkeypatch) -> None:
    monkeypatch.setenv("DEMIXER_DOWNLOAD_ROOT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(engine.download, "RETRY_DELAY_S", 0.0)
    revealed: list[Path] = []
    monkeypatch.setattr("app.firstrun.reveal", revealed.append)
    [item] = window.open_paths([song])
    message = _dialog_error(window, qtbot)
    assert "Cannot download" in message and "5c90dfd2-34c22ccb.th" in message
    assert item.state == State.PREPARING  # it waits for the person's answer
    dialog = window.model_dialog
    qtbot.mouseClick(dialog.folder, Qt.MouseButton.LeftButton)
    assert revealed and revealed[0].name == "models"  # where to put the checkpoint by hand
    qtbot.mouseClick(dialog.retry, Qt.MouseButton.LeftButton)
    assert not dialog.error.isVisibleTo(dialog)
    qtbot.waitUntil(lambda: dialog.error.isVisibleTo(dialog), timeout=30000)
    qtbot.mouseClick(dialog.cancel, Qt.MouseButton.LeftButton)
    wait_for(qtbot, item)
    assert item.state == State.FAILED and "htdemucs_6s is not available" in item.message
    assert window.model_dialog is None


def test_first_run_with_a_bad_download_reports_the_checksum(  # type: ignore[no-untyped-def]
        window, song, qtbot, monkeypatch, wrong_checkpoint_server) -> None:
    monkeypatch.setenv("DEMIXER_DOWNLOAD_ROOT", wrong_checkpoint_server)
    [item] = window.open_paths([song])
    message = _dialog_error(window, qtbot)
    assert "1024 bytes instead of 54996327" in message and "try again" in message
    window.model_dialog.reject()  # Escape / the close box
    wait_for(qtbot, item)
    assert item.state == State.FAILED
    assert not any(window.library.root.iterdir())


def test_the_first_run_dialog_shows_all_of_its_text(qtbot) -> None:  # type: ignore[no-untyped-def]
    """No wrapped line is cut off, before or after a long error (the dialog grows to it)."""
    from PySide6.QtWidgets import QLabel

    from app.firstrun import ModelDialog
    from app.protocol import ModelKey
    from app.service import SeparationService

    key = ModelKey("htdemucs_6s")
    dialog = ModelDialog(key, SeparationService())
    qtbot.addWidget(dialog)

    def cut_off() -> list[str]:
        return [label.text()[:40] for label in dialog.findChildren(QLabel)
                if label.isVisible() and label.wordWrap()
                and label.height() < label.heightForWidth(label.width())]

    dialog.show()
    qtbot.waitExposed(dialog)
    assert cut_off() == []
    dialog._on_failed(key, "Cannot download htdemucs_6s checkpoint 5c90dfd2-34c22ccb.th from "
                      "http://127.0.0.1:9/5c90dfd2-34c22ccb.th (connection refused); download "
                      "it by hand and put it in /a/rather/long/folder/of/models.")
    qtbot.wait(50)
    assert dialog.error.isVisible() and cut_off() == []
