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
