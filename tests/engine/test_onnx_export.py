"""ONNX export of the core: parity with the torch core, metadata, atomic writes, the commands.

The exports are made once per session (fixtures `tiny_onnx_root`, `real_onnx_root` in
tests/conftest.py) and shared with test_openvino_backend.py and test_onnxruntime_backend.py.
Runtimes and torch take turns here, never compute at once (engine.onnx_export).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest

from engine.cli import main
from engine.core import core_shapes
from engine.errors import DemixerError
from engine.onnx_cache import CachedOnnx, OnnxKey, find_onnx
from engine.onnx_export import (
    META_PREFIX,
    OutputCheck,
    check_exported,
    compare,
    export_core,
    metadata_bytes,
    read_metadata,
    shapes_of,
)
from engine.store import load_model, resolve_model

TOLERANCE = 1e-4  # relative (max abs error / max |torch output|), issue 13


def session_export(root: Path, repo: Path) -> CachedOnnx:
    """The session's export of `repo`'s htdemucs_6s in the cache root `root`."""
    resolved = resolve_model("htdemucs_6s", repo)
    found = find_onnx(OnnxKey.make("htdemucs_6s", resolved.sha256[0]), root)
    assert found is not None
    return found


def member(repo: Path) -> Any:
    bag: Any = load_model(resolve_model("htdemucs_6s", repo))
    return bag.models[0]


def _assert_close(checks: list[OutputCheck], tolerance: float = TOLERANCE) -> None:
    assert [c.name for c in checks] == ["spec_out", "time_out"]
    for check in checks:
        assert check.relative <= tolerance and check.snr_db >= 70, check


def test_tiny_export_matches_the_torch_core(tiny_onnx_root: Path, tiny_repo: Path) -> None:
    export = session_export(tiny_onnx_root, tiny_repo)
    results = check_exported(export.path, member(tiny_repo), ("onnxruntime", "openvino"),
                             seed=3)
    for checks in results.values():
        _assert_close(checks)


@pytest.mark.slow
def test_real_architecture_export_matches_the_torch_core(real_onnx_root: Path,
                                                         real_repo: Path) -> None:
    """One torch reference, then one call of each runtime on the same inputs; bf16 is the
    fast mode: >= 40 dB from exact (and not exact: < 90 dB)."""
    export = session_export(real_onnx_root, real_repo)
    assert 150e6 < export.bytes < 2**31 - 1  # a single file, no external data
    results = check_exported(export.path, member(real_repo),
                             ("onnxruntime", "openvino", "openvino-bf16"))
    _assert_close(results["onnxruntime"])
    _assert_close(results["openvino"])
    for check in results["openvino-bf16"]:
        assert 40 <= check.snr_db < 90, check
    print({k: [c.line() for c in v] for k, v in results.items()})  # shown with -s


def test_metadata_names_the_shapes_checkpoint_and_versions(tiny_onnx_root: Path,
                                                          tiny_repo: Path) -> None:
    import onnxruntime as ort
    import torch

    from engine import __version__

    export = session_export(tiny_onnx_root, tiny_repo)
    meta = read_metadata(export.path)
    assert meta == export.metadata  # the manifest's copy is the file's own
    # ONNX Runtime's parser reads the same metadata_props (so does any ONNX tool)
    assert ort.InferenceSession(str(export.path)).get_modelmeta().custom_metadata_map == meta
    assert shapes_of(meta, export.path) == core_shapes(member(tiny_repo))
    sha = resolve_model("htdemucs_6s", tiny_repo).sha256[0]
    expected = {"checkpoint_sha256": sha, "opset": "17", "batch": "1", "model": "htdemucs_6s",
                "demixer_version": __version__, "torch_version": torch.__version__}
    assert {k: meta[META_PREFIX + k] for k in expected} == expected


def test_metadata_reader_refuses_what_is_not_onnx(tmp_path: Path) -> None:
    text = tmp_path / "notes.onnx"
    text.write_bytes(b"\xff" * 64)
    with pytest.raises(DemixerError, match="notes.onnx cannot be read as an ONNX file"):
        read_metadata(text)
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(metadata_bytes({"producer": "someone else"}))
    assert read_metadata(foreign) == {"producer": "someone else"}
    with pytest.raises(DemixerError, match="foreign.onnx was not exported by Demixer"):
        shapes_of(read_metadata(foreign), foreign)


def test_fixed_batch_cores_run_any_number_of_chunks() -> None:
    """A core made for batch 2 given 3 chunks: two calls, the last padded with a copy of the
    third chunk; each chunk's output is its own."""
    from engine.backends import predict_in_groups
    from engine.shapes import CoreShapes

    shapes = CoreShapes(samplerate=8, segment_samples=16, channels=2, sources=("a", "b"),
                        nfft=8, hop=4, freqs=4, frames=4)
    calls: list[int] = []

    def run(spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert spec.shape[0] == wave.shape[0] == 2 and spec.flags.c_contiguous
        calls.append(int(spec[-1, 0, 0, 0]))
        spec_out = np.stack([spec * (s + 1) for s in range(2)], axis=1)
        return spec_out, np.stack([wave, -wave], axis=1)

    spec = np.arange(3, dtype=np.float32)[:, None, None, None] * np.ones((3, 4, 4, 4), np.float32)
    wave = np.ones((3, 2, 16), np.float64)  # cast to float32 on the way in
    spec_out, time_out = predict_in_groups(run, spec, wave, 2, shapes, "test")
    assert calls == [1, 2]  # the padded second call repeated chunk 2
    assert spec_out.shape == (3, 2, 4, 4, 4) and time_out.shape == (3, 2, 2, 16)
    np.testing.assert_array_equal(spec_out[:, 1], 2 * spec)
    with pytest.raises(ValueError, match="test core expects spec"):
        predict_in_groups(run, spec[:, :2], wave, 2, shapes, "test")


def test_export_replaces_a_file_only_when_complete(tiny_repo: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "core.onnx"
    out.write_bytes(b"an older export")
    model = member(tiny_repo)
    new = b"\x08\x08"  # a ModelProto with ir_version 8 and nothing else: no tracing here
    monkeypatch.setattr("engine.onnx_export.export_bytes", lambda *a: (new, core_shapes(model)))

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr("engine.atomicio.os.replace", disk_full)
        with pytest.raises(OSError, match="disk full"):
            export_core(model, out, name="htdemucs_6s", checkpoint_sha256="0" * 64)
    assert out.read_bytes() == b"an older export"
    assert [p.name for p in tmp_path.iterdir()] == ["core.onnx"]  # no temporary left
    export_core(model, out, name="htdemucs_6s", checkpoint_sha256="0" * 64)
    assert out.read_bytes().startswith(new)
    assert read_metadata(out)[META_PREFIX + "checkpoint_sha256"] == "0" * 64


def test_export_onnx_command_with_check(tiny_repo: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A batch-2 export, checked: the runtime runs both chunks of a call against torch."""
    out = tmp_path / "tiny.onnx"
    assert main(["models", "export-onnx", "htdemucs_6s", "--repo", str(tiny_repo), "-o",
                 str(out), "--batch", "2", "--check"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == str(out) and read_metadata(out)[META_PREFIX + "batch"] == "2"
    assert [x.split(":")[0] for x in lines[1:]] == ["tiny.onnx (onnxruntime)"] * 2
    assert all(" - ok" in x and "SNR" in x for x in lines[1:]), lines
    # a second export to the same file is refused before any work
    assert main(["models", "export-onnx", "htdemucs_6s", "--repo", str(tiny_repo), "-o",
                 str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == f"demixer: {out} exists already; use --overwrite to replace it."
    assert main(["models", "export-onnx", "htdemucs_6s", "-o", str(out), "--opset", "9"]) == 2


def test_check_onnx_command(tiny_onnx_root: Path, tiny_repo: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    from engine.testmodel import make_test_model

    export = session_export(tiny_onnx_root, tiny_repo)
    assert main(["models", "check-onnx", str(export.path), "--repo", str(tiny_repo),
                 "--runtime", "openvino"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and all("(openvino)" in x and " - ok" in x for x in out), out
    other = tmp_path / "other"
    make_test_model("htdemucs_6s", other, seed=9, tiny=True)
    assert main(["models", "check-onnx", str(export.path), "--repo", str(other)]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "was exported from another checkpoint of htdemucs_6s" in line


def test_compare_reports_error_relative_error_and_snr() -> None:
    want = (np.ones((2, 3), np.float32), np.full((4,), 2.0, np.float32))
    got = (want[0] + np.float32(0.01), want[1].copy())
    spec, time_ = compare(got, want)
    assert spec.max_abs == pytest.approx(0.01, rel=1e-3)
    assert spec.relative == pytest.approx(0.01, rel=1e-3)
    assert spec.snr_db == pytest.approx(40.0, abs=0.01)
    assert time_.max_abs == 0 and time_.snr_db == math.inf


def test_an_export_failure_is_one_sentence(tiny_repo: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """e.g. torch's exporter without the onnx package (checked in a clean venv: it needs it)."""
    from torch.onnx import OnnxExporterError

    def no_onnx(*args: object) -> NoReturn:
        raise OnnxExporterError("Module onnx is not installed!")

    monkeypatch.setattr("engine.onnx_export.export_bytes", no_onnx)
    with pytest.raises(DemixerError) as err:
        export_core(member(tiny_repo), tmp_path / "x.onnx", name="htdemucs_6s",
                    checkpoint_sha256="0" * 64)
    assert str(err.value) == ("Exporting the network of htdemucs_6s to ONNX failed (Module onnx "
                              "is not installed!).")
    assert not any(tmp_path.iterdir())


def test_an_export_in_another_process_is_waited_for(tiny_onnx_root: Path, tiny_repo: Path,
                                                    tmp_path: Path) -> None:
    """While another process holds an entry's lock, a start waits (saying so), then uses
    what that process published: no second export, no checkpoint loaded."""
    import shutil
    import threading

    from engine.onnx_cache import ensure_onnx, entry_lock

    export = session_export(tiny_onnx_root, tiny_repo)
    key = OnnxKey(**export.manifest["key"])
    root = tmp_path / "onnx"
    root.mkdir()
    leftover = root / f".tmp-{key.entry_name}-1-dead"  # a killed export's temp dir
    leftover.mkdir()
    events: list[str] = []
    found: list[CachedOnnx] = []

    def load() -> NoReturn:
        raise AssertionError("the waiting start loaded the checkpoint")

    with entry_lock(root / f".{key.entry_name}.lock"):
        waiter = threading.Thread(target=lambda: found.append(ensure_onnx(
            key, load, root=root, progress=lambda e: events.append(e.message))))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and events == ["Waiting for another Demixer process "
                                                "exporting htdemucs_6s"]
        shutil.copytree(export.entry, root / key.entry_name)  # the other process publishes
    waiter.join(30)
    assert found and found[0].hit and found[0].path.read_bytes() == export.path.read_bytes()
    assert leftover.exists()  # a hit touches nothing; the next export under the lock cleans it
