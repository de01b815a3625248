"""The library at start-up: finished stems are never deleted without the person saying so,
damaged entries are rebuilt or listed, one bad entry does not stop the app, and a folder a
separation is writing into (another window, another process) is never touched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

import engine.atomicio
from app.library import DamagedEntry, Library, LibraryEntry
from tests.app.helpers import RATE, make_entry, stems_audio, write_stems

DAMAGE = {
    "missing": None,
    "empty": b"",
    "truncated": b'{"title": "Groove", "source": "/music/Groove.wav", "mod',
    "not UTF-8": b'{"title": "Gr\xff\xfeove"}',
    "a list": b"[]",
    "null": b"null",
    "text for created": None,  # filled in below from the real entry
    "a number for title": None,
}


def _damage(entry: LibraryEntry, how: str) -> None:
    path = entry.folder / "entry.json"
    info = json.loads(path.read_text())
    if how == "missing":
        path.unlink()
    elif how == "text for created":
        path.write_text(json.dumps({**info, "created": "yesterday"}))
    elif how == "a number for title":
        path.write_text(json.dumps({**info, "title": 5}))
    else:
        path.write_bytes(DAMAGE[how])  # type: ignore[arg-type]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.f32"))}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_finished_stems_under_a_damaged_entry_are_kept_and_listed(make_window, how: str) -> None:  # type: ignore[no-untyped-def]
    library = Library()
    entry = make_entry(library, "Groove", stems_audio(2 * RATE))
    stems_before = _files(entry.folder)
    _damage(entry, how)
    window = make_window()  # start-up: tidy, then list
    assert _files(entry.folder) == stems_before  # not one stem lost
    [rebuilt] = window.library.entries()
    assert rebuilt.folder == entry.folder and rebuilt.complete
    assert rebuilt.title == "Groove" and rebuilt.source == "/music/Groove.wav"
    assert rebuilt.model == "htdemucs" and rebuilt.frames == 2 * RATE
    assert window.library_view.count() == 1
    assert LibraryEntry.load(entry.folder).title == "Groove"  # entry.json is whole again
    window.show_entry(rebuilt)
    assert window.track is not None and window.track.frames == 2 * RATE


def test_a_damaged_folder_without_finished_stems_waits_for_the_persons_answer(  # type: ignore[no-untyped-def]
        make_window, asked, qtbot) -> None:
    library = Library()
    good = make_entry(library, "Good", stems_audio(RATE))
    bad = library.create(Path("/music/Half.wav"), "htdemucs", False)
    write_stems(bad.stems_dir, stems_audio(RATE), ready=RATE // 2).close()  # unfinished
    library.release(bad)
    (bad.folder / "entry.json").write_bytes(b"\x00\x00\x00")  # what a power loss may leave
    window = make_window()
    view = window.library_view
    assert view.count() == 2 and view.item(0).text().startswith("Good")
    assert view.item(1).text().startswith(f"⚠ {bad.folder.name}")
    assert "cannot be read" in window.statusBar().currentMessage()
    asked.answers["Damaged library folder"] = "Keep"
    rect = view.visualItemRect(view.item(1))
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert asked.questions[-1][2] == ["Delete", "Keep"]
    assert str(bad.folder) in asked.questions[-1][1]
    assert bad.folder.exists() and view.count() == 2
    window.shutdown()
    window = make_window()  # kept means kept: a restart does not remove it either
    assert bad.folder.exists() and window.library_view.count() == 2
    asked.answers["Damaged library folder"] = "Delete"
    window.library_view.damagedRequested.emit(window.library_view.damaged[0])
    assert window.library_view.count() == 1 and good.folder.exists()
    qtbot.waitUntil(lambda: not bad.folder.exists(), timeout=5000)


def test_one_bad_entry_does_not_stop_the_app_or_hide_the_others(make_window) -> None:  # type: ignore[no-untyped-def]
    library = Library()
    for title in ("One", "Two"):
        make_entry(library, title, stems_audio(RATE))
    bad = make_entry(library, "Three", stems_audio(RATE))
    (bad.folder / "entry.json").write_text("[]")
    (bad.stems_dir / "stems.json").write_text("null")  # nothing to rebuild it from
    window = make_window()
    titles = [window.library_view.item(i).text().split("\n")[0]
              for i in range(window.library_view.count())]
    assert sorted(titles[:2]) == ["One", "Two"] and titles[2] == f"⚠ {bad.folder.name}"
    with pytest.raises(DamagedEntry, match="holds list"):
        LibraryEntry.load(bad.folder)


def test_the_entry_is_flushed_to_disk_before_it_replaces_the_old_one(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    entry = make_entry(Library(), "Song", stems_audio(RATE))
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(a: Path, b: Path) -> None:
        calls.append(f"replace {Path(b).name}")
        real_replace(a, b)

    monkeypatch.setattr(engine.atomicio.os, "fsync", fsync)
    monkeypatch.setattr(engine.atomicio.os, "replace", replace)
    entry.title = "Renamed"
    entry.save()
    assert calls[:2] == ["fsync", "replace entry.json"]
    assert LibraryEntry.load(entry.folder).title == "Renamed"


def test_a_crash_between_the_stems_and_the_entry_loses_nothing(make_window) -> None:  # type: ignore[no-untyped-def]
    """The stems were complete, the entry not yet marked: it is completed, not removed."""
    entry = make_entry(Library(), "Late", stems_audio(RATE))
    entry.complete = False
    entry.save()
    window = make_window()
    [done] = window.library.entries()
    assert done.folder == entry.folder and done.title == "Late" and done.complete


def test_what_cannot_resume_is_removed_at_start(make_window) -> None:  # type: ignore[no-untyped-def]
    """A run that left no checkpoint, a delete cut short, a folder never given its entry."""
    library = Library()
    keep = make_entry(library, "Keep", stems_audio(RATE))
    stale = library.create(Path("/music/Stale.wav"), "htdemucs", False)
    write_stems(stale.stems_dir, stems_audio(RATE), ready=0).close()  # no checkpoint
    library.release(stale)
    leftovers = [library.root / ".deleted-old", library.root / ".new-20250101-x"]
    for folder in leftovers:
        (folder / "stems").mkdir(parents=True)
        (folder / "stems" / "drums.f32").write_bytes(np.zeros(16, np.float32).tobytes())
    make_window()
    assert not stale.folder.exists() and not any(f.exists() for f in leftovers)
    assert keep.folder.exists()


def test_a_separation_running_in_another_window_is_left_alone(make_window) -> None:  # type: ignore[no-untyped-def]
    """Its folder is locked (flock, per open file: another window in this process counts
    as another process would): start-up tidying and listing skip it."""
    other = Library()
    running = other.create(Path("/music/Busy.wav"), "htdemucs", False)
    write_stems(running.stems_dir, stems_audio(RATE), ready=RATE // 3).close()
    (running.folder / "entry.json").unlink()  # even looking damaged, it is not ours
    window = make_window()
    assert running.folder.exists() and (running.stems_dir / "drums.f32").exists()
    assert window.library_view.count() == 0 and window.tidied.damaged == []
    other.release(running)
    assert [d.folder for d in Library().listing()[1]] == [running.folder]
