"""engine.atomicio: the target is either the old or the complete new content; no temporaries."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import atomicio


def test_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "entry.json"
    target.write_text("old")
    atomicio.write_text_atomic(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in tmp_path.iterdir()] == ["entry.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "stems.json"
    target.write_text("old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomicio.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomicio.write_bytes_atomic(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["stems.json"]


def _staged_set(tmp_path: Path, names: list[str]) -> list[atomicio.Staged]:
    staged = []
    for name in names:
        temp = tmp_path / f".{name}.new"
        temp.write_text(f"new {name}")
        staged.append(atomicio.Staged.of(tmp_path / name, temp))
    return staged


def test_commit_all_failing_part_way_puts_the_old_set_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The swap itself fails on the third file (and another writer replaced the second file
    meanwhile): the first file is the old one again, the other writer's file stays."""
    names = ["drums.wav", "bass.wav", "other.wav"]
    for name in names:
        (tmp_path / name).write_text(f"old {name}")
    staged = _staged_set(tmp_path, names)
    real_replace = atomicio.os.replace

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)).name == "other.wav" and Path(str(src)).name.startswith(".other"):
            (tmp_path / "theirs").write_text("their bass")
            real_replace(tmp_path / "theirs", tmp_path / "bass.wav")
            raise OSError(5, "Input/output error")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(atomicio.os, "replace", replace)
    with pytest.raises(OSError):
        atomicio.commit_all(staged, overwrite=True)
    monkeypatch.undo()
    atomicio.discard_temps(staged)
    assert (tmp_path / "drums.wav").read_text() == "old drums.wav"
    assert (tmp_path / "bass.wav").read_text() == "their bass"
    assert (tmp_path / "other.wav").read_text() == "old other.wav"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_commit_all_never_replaces_a_file_that_appeared_without_overwrite(
        tmp_path: Path) -> None:
    staged = _staged_set(tmp_path, ["drums.wav", "bass.wav"])
    (tmp_path / "bass.wav").write_text("appeared meanwhile")
    with pytest.raises(FileExistsError):
        atomicio.commit_all(staged, overwrite=False)
    atomicio.discard_temps(staged)
    assert (tmp_path / "bass.wav").read_text() == "appeared meanwhile"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bass.wav"]
