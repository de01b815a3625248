"""SeparationJob: resumable stems folders (the app's API), failures as one line, clean-up.

The network is tests/engine/fakes.py's stand-in: these tests are about the job's machinery.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine import partial
from engine.job import JobEvent, SeparationJob
from engine.separator import Separator
from engine.stembuffers import StemBuffers, read_index
from tests.engine.fakes import fake_separator


def _song(tmp_path: Path, seconds: float = 6.0) -> Path:
    path = tmp_path / "song.wav"
    audio = 0.2 * np.random.default_rng(2).standard_normal((int(44100 * seconds), 2))
    sf.write(path, audio.astype(np.float32), 44100, subtype="FLOAT")
    return path


def _read_all(folder: Path) -> np.ndarray:
    stems = StemBuffers.open(folder)
    try:
        return np.stack([stems.read(i, 0, stems.frames) for i in range(len(stems.sources))])
    finally:
        stems.close()


def _cancel_after(job: SeparationJob, chunks: int) -> list[JobEvent]:
    events: list[JobEvent] = []

    def on_event(e: JobEvent) -> None:
        events.append(e)
        if e.kind == "ready" and sum(x.kind == "ready" for x in events) >= chunks:
            job.cancel()

    job.on_event = on_event
    return events


def test_a_cancelled_job_resumes_bit_identically(tmp_path: Path) -> None:
    song = _song(tmp_path)
    sep: Separator = fake_separator(1, 2, seed=None)  # random shifts: the record keeps them
    folder = tmp_path / "library-entry"
    job = SeparationJob(song, sep, stems_dir=folder)
    _cancel_after(job, 6)
    result = job.run()
    assert result.cancelled and result.resumable is not None and 0 < result.resumable < 1
    state = partial.inspect(folder, job.fingerprint())
    assert state.resumable and state.fraction == result.resumable and not state.complete
    again = SeparationJob(song, sep, stems_dir=folder)
    events: list[JobEvent] = []
    again.on_event = events.append
    assert again.run().ok and again.result.resumed_from == state.fraction
    [resumed] = [e for e in events if e.kind == "resumed"]
    assert resumed.message == f"resuming song.wav from {int(state.fraction * 100)}%"
    offsets = tuple(read_index(folder)["resume"]["offsets"])  # type: ignore[index]
    whole = SeparationJob(song, fake_separator(1, 2, shift_offsets=offsets),
                          stems_dir=tmp_path / "whole")
    assert whole.run().ok
    assert np.array_equal(_read_all(folder), _read_all(tmp_path / "whole"))
    assert partial.inspect(folder).complete


def test_other_settings_or_a_changed_input_start_afresh(tmp_path: Path) -> None:
    song = _song(tmp_path)
    folder = tmp_path / "entry"
    job = SeparationJob(song, fake_separator(1, 0), stems_dir=folder)
    _cancel_after(job, 3)
    job.run()
    other = SeparationJob(song, fake_separator(1, 0, overlap=0.5), stems_dir=folder)
    state = partial.inspect(folder, other.fingerprint())
    assert not state.resumable and "options" in state.reason
    sf.write(song, np.zeros((44100, 2), np.float32), 44100)  # the input changed
    assert not partial.inspect(folder).resumable
    events: list[JobEvent] = []
    rerun = SeparationJob(song, fake_separator(1, 0), stems_dir=folder, on_event=events.append)
    assert rerun.run().ok and rerun.result.resumed_from is None
    assert not any(e.kind == "resumed" for e in events)


def test_cancel_with_discard_removes_the_stems(tmp_path: Path) -> None:
    song = _song(tmp_path)
    folder = tmp_path / "entry"
    job = SeparationJob(song, fake_separator(1, 0), stems_dir=folder)

    def on_event(e: JobEvent) -> None:
        if e.kind == "ready":
            job.cancel(discard=True)

    job.on_event = on_event
    assert job.run().cancelled and job.result.resumable is None
    assert not folder.exists()


def test_an_unexpected_error_is_one_line_naming_the_log(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        _isolated_home: Path) -> None:
    song = _song(tmp_path, 2.0)
    sep = fake_separator(1, 0)

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(sep, "separate", broken)
    job = SeparationJob(song, sep)
    job.start()
    result = job.wait()
    assert not result.ok and not result.cancelled and result.error is not None
    log = _isolated_home / "logs" / "demixer.log"
    assert result.error == (f"{song}: failed unexpectedly (ZeroDivisionError: a bug deep "
                            f"inside); the details are in {log}.")
    text = log.read_text()
    assert "Traceback" in text and "a bug deep inside" in text
    assert job.workdir is not None and not job.workdir.exists()


def test_the_job_thread_is_not_a_daemon(tmp_path: Path) -> None:
    """A daemon thread still inside torch/numpy at interpreter exit gets killed there, and
    the process aborts (exit 134); the interpreter must wait for the job instead."""
    job = SeparationJob(_song(tmp_path, 1.0), fake_separator(1, 0))
    thread = job.start()
    assert not thread.daemon
    job.wait()
    thread.join()


def test_stale_partial_runs_are_removed_at_start(tmp_path: Path) -> None:
    song = _song(tmp_path)
    sep = fake_separator(1, 0)
    runs = {}
    for name in ("kept", "gone", "nothing"):
        run = partial.open_run({"name": name}, song if name != "gone" else tmp_path / name)
        runs[name] = run
    gone = tmp_path / "gone.wav"
    sf.write(gone, np.zeros((44100 * 6, 2), np.float32), 44100)
    for name, src in (("kept", song), ("gone", gone)):
        job = SeparationJob(src, sep, stems_dir=runs[name].stems_dir,
                            workdir=runs[name].work_dir)
        _cancel_after(job, 3)
        job.run()
    (runs["nothing"].work_dir / "decoded-x.f32").parent.mkdir(parents=True)
    (runs["nothing"].work_dir / "decoded-x.f32").write_bytes(b"\0" * 1000)
    gone.unlink()
    for run in runs.values():
        run.lock.release()  # as if their processes had died
    busy_work, busy_lock = partial.new_workdir()  # a live job's folder: never touched
    crashed = busy_work.parent / "1-deadbeef"
    crashed.mkdir()
    removed = partial.clean_stale()
    assert sorted(removed) == sorted([runs["gone"].folder, runs["nothing"].folder, crashed])
    assert partial.inspect(runs["kept"].stems_dir).resumable
    assert busy_work.exists()
    busy_lock.release()


def test_one_run_folder_per_process(tmp_path: Path) -> None:
    song = _song(tmp_path, 1.0)
    run = partial.open_run({"k": 1}, song)
    try:
        lock = partial.FolderLock(run.folder)
        done = threading.Event()
        held: list[bool] = []

        def other_process() -> None:  # flock locks belong to open files: a thread will do
            held.append(lock.acquire())
            done.set()

        threading.Thread(target=other_process).start()
        done.wait(5)
        assert held == [False] and partial.is_locked(run.folder)
    finally:
        run.close(remove=True)
    assert not run.folder.exists()


def test_a_full_disk_while_separating_is_one_sentence(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from the stems' pwrite used to escape the job thread (a traceback, then
    "demixer: cancelled", sometimes an abort)."""
    import errno

    song = _song(tmp_path, 3.0)
    folder = tmp_path / "entry"

    def full(self: StemBuffers, start: int, block: np.ndarray) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StemBuffers, "write", full)
    job = SeparationJob(song, fake_separator(1, 0), stems_dir=folder)
    result = job.run()
    assert result.error == (f"{song}: cannot be separated, because {folder} cannot be "
                            "written (the disk is full).")
    assert not folder.exists()  # nothing was finished, so nothing is kept


def test_a_failure_never_removes_stems_it_did_not_make(tmp_path: Path) -> None:
    """A folder given to a job that fails before it starts separating (here: the input is
    not audio) keeps what was in it, e.g. finished stems of an earlier version."""
    folder = tmp_path / "entry"
    old = StemBuffers(folder, ["drums"], 2, 10, 44100)
    old.save_index(complete=True)
    old.close()
    before = sorted(p.name for p in folder.iterdir())
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    result = SeparationJob(bad, fake_separator(1, 0), stems_dir=folder).run()
    assert result.error is not None and str(bad) in result.error
    assert sorted(p.name for p in folder.iterdir()) == before
