"""Writing a song's stems: all or nothing, and a rollback touches only this run's own files.

Data loss 1 and 3 of issue 12: `--overwrite` plus a full disk or a cancel once deleted the
stems already moved into place (old and new both gone), and the rollback deleted by name, so a
file another process had just written under the same name went too.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine import writers
from engine.errors import Cancelled, DemixerError
from engine.outputs import OutputPlan, check_outputs, write_outputs
from engine.stembuffers import StemBuffers

SOURCES = ["drums", "bass", "other", "vocals", "guitar", "piano"]


def _stems(folder: Path, frames: int = 4410) -> StemBuffers:
    stems = StemBuffers(folder, SOURCES, 2, frames, 44100)
    rng = np.random.default_rng(1)
    stems.write(0, (0.1 * rng.standard_normal((len(SOURCES), 2, frames))).astype(np.float32))
    stems.ready_frames = frames
    return stems


def _old_set(plan: OutputPlan, track: Path) -> dict[Path, bytes]:
    """An existing set of stems, each with its own content."""
    old = {}
    for name, path in check_outputs(plan, track, SOURCES).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"the old {name}, which must survive".encode())
        old[path] = path.read_bytes()
    return old


def _fail_on_file(monkeypatch: pytest.MonkeyPatch, number: int, error: BaseException,
                  before: object = None) -> None:
    """Make writing the `number`th stem file raise `error` (after `before()` runs)."""
    opened = 0
    real_init = writers._SoundfileEncoder.__init__
    real_write = writers._SoundfileEncoder.write

    def counting_init(self: object, *args: object, **kwargs: object) -> None:
        nonlocal opened
        opened += 1
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    def failing_write(self: object, block: np.ndarray) -> None:
        if opened == number:
            if callable(before):
                before()
            raise error
        real_write(self, block)  # type: ignore[arg-type]

    monkeypatch.setattr(writers._SoundfileEncoder, "__init__", counting_init)
    monkeypatch.setattr(writers._SoundfileEncoder, "write", failing_write)


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*") if p.is_file()}


def test_overwrite_with_a_full_disk_keeps_the_old_stems(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    plan = OutputPlan(root=tmp_path / "out", overwrite=True)
    track = tmp_path / "song.wav"
    old = _old_set(plan, track)
    _fail_on_file(monkeypatch, 3, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(DemixerError) as err:
        write_outputs(plan, track, _stems(tmp_path / "s"), 44100, 4410)
    for path, content in old.items():
        assert path.exists() and path.read_bytes() == content, f"{path.name} was lost"
    assert _files(plan.root) == {p.name for p in old}  # no temporaries, no backups
    assert "the disk is full" in str(err.value)


def test_overwrite_cancelled_while_writing_keeps_the_old_stems(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = OutputPlan(root=tmp_path / "out", overwrite=True)
    track = tmp_path / "song.wav"
    old = _old_set(plan, track)
    cancel = threading.Event()
    _fail_on_file(monkeypatch, 4, Cancelled("writing was cancelled"), before=cancel.set)
    with pytest.raises(Cancelled):
        write_outputs(plan, track, _stems(tmp_path / "s"), 44100, 4410, cancel=cancel)
    for path, content in old.items():
        assert path.read_bytes() == content, f"{path.name} was lost"
    assert _files(plan.root) == {p.name for p in old}


def test_a_rollback_leaves_another_writers_file_alone(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process writes drums.wav while this run writes its stems; this run then fails:
    the other process's drums.wav must survive (it is not this run's file)."""
    plan = OutputPlan(root=tmp_path / "out")
    track = tmp_path / "song.wav"
    drums = check_outputs(plan, track, SOURCES)["drums"]

    def other_process_writes_drums() -> None:
        theirs = drums.with_name("theirs.tmp")
        theirs.write_bytes(b"another process's drums")
        os.replace(theirs, drums)

    _fail_on_file(monkeypatch, 3, OSError(errno.EIO, "Input/output error"),
                  before=other_process_writes_drums)
    with pytest.raises(DemixerError):
        write_outputs(plan, track, _stems(tmp_path / "s"), 44100, 4410)
    assert drums.read_bytes() == b"another process's drums"
    assert _files(plan.root) == {"drums.wav"}


def test_everything_is_written_when_nothing_fails(tmp_path: Path) -> None:
    plan = OutputPlan(root=tmp_path / "out", overwrite=True)
    track = tmp_path / "song.wav"
    old = _old_set(plan, track)
    written = write_outputs(plan, track, _stems(tmp_path / "s"), 44100, 4410)
    assert sorted(written) == sorted(old)
    assert all(p.read_bytes()[:4] == b"RIFF" for p in written)
    assert _files(plan.root) == {p.name for p in old}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB filesystem (tmpfs), where the machine lets us mount one (root on Linux)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a small filesystem here; the simulated full disk above "
                    "covers the same path")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_overwrite_on_a_really_full_disk_keeps_the_old_stems(tmp_path: Path,
                                                             small_disk: Path) -> None:
    plan = OutputPlan(root=small_disk / "out", overwrite=True)
    track = tmp_path / "song.wav"
    first = write_outputs(plan, track, _stems(tmp_path / "a", 4410), 44100, 4410)
    old = {p: p.read_bytes() for p in first}  # 6 x 17 kB
    longer = _stems(tmp_path / "b", 441000)  # 6 x 1.7 MB: cannot fit
    with pytest.raises(DemixerError, match="disk is full") as err:
        write_outputs(plan, track, longer, 44100, 441000)
    assert "\n" not in str(err.value)
    for path, content in old.items():
        assert path.read_bytes() == content
    assert _files(plan.root) == {p.name for p in old}


def test_a_crashed_writers_old_temporaries_are_removed(tmp_path: Path) -> None:
    plan = OutputPlan(root=tmp_path / "out")
    track = tmp_path / "song.wav"
    drums = check_outputs(plan, track, SOURCES)["drums"]
    drums.parent.mkdir(parents=True)
    stale, fresh = drums.with_name(".drums.wav.partial-0badc0de"), drums.with_name(
        ".drums.wav.partial-feedf00d")
    stale.write_bytes(b"half a stem from a killed run")
    fresh.write_bytes(b"another writer, right now")
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    write_outputs(plan, track, _stems(tmp_path / "s"), 44100, 4410)
    assert not stale.exists() and fresh.exists()


def test_stem_mp4_plan_writes_one_ni_file_per_track(tmp_path: Path) -> None:
    from engine.stemmp4 import STEM_MP4_SUFFIX
    from engine.writers import OutputFormat

    plan = OutputPlan(root=tmp_path / "out", fmt=OutputFormat("alac"), stem_mp4=True,
                      stem_map="drums;bass+piano;other+guitar;vocals")
    track = tmp_path / "song.flac"
    stems = _stems(tmp_path / "s")
    paths = check_outputs(plan, track, SOURCES)
    assert list(paths.values()) == [plan.root / "htdemucs_6s" / f"song{STEM_MP4_SUFFIX}"]
    mix = np.sum([stems.read(s, 0, 4410) for s in SOURCES], axis=0, dtype=np.float32)
    with pytest.raises(ValueError, match="needs the original mix"):
        write_outputs(plan, track, stems, 44100, 4410)
    assert _files(plan.root) == set()
    written = write_outputs(plan, track, stems, 44100, 4410, mix=mix)
    assert written == list(paths.values()) and _files(plan.root) == {"song.stem.mp4"}
    data = written[0].read_bytes()
    assert data[4:12] == b"ftypM4A " and b'"name": "Bass"' in data
    with pytest.raises(DemixerError, match="puts bass in two stems"):
        check_outputs(OutputPlan(stem_mp4=True, stem_map="drums;bass;bass;vocals"), track,
                      SOURCES)
