"""`--backend openvino`: parity with demucs, bf16, the export and compile caches, usage errors.

The tiny model's export is made once per session (`tiny_onnx_root`) and copied into each
test's data dir, so the CLI finds it; OpenVINO's compiled-model cache starts empty per test.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
import soundfile as sf

from engine.cli import main
from engine.coreml.convert import ConvertProgress
from engine.onnx_cache import OnnxKey, ensure_model_onnx, find_onnx
from engine.openvino_backend import (
    OpenVINOBackend,
    bf16_supported,
    compiled_cache_dir,
    openvino_backends_for,
)
from engine.store import resolve_model
from tests.conftest import seed_onnx_cache
from tests.engine.test_parity import _demucs, _music_like, _snr

REPO_ROOT = Path(__file__).resolve().parents[2]
STEMS = ["drums", "bass", "other", "vocals", "guitar", "piano"]


class Boom(Exception):
    """Raised by what a cached start must not reach (loading the checkpoint, exporting)."""


def _boom(*args: object, **kwargs: object) -> NoReturn:
    raise Boom()


def separate_vs_demucs(repo: Path, tmp_path: Path, backend: str, length: int,
                       extra: tuple[str, ...] = ()) -> list[float]:
    """`demixer separate --float32` with `backend` against demucs.api.Separator(shifts=0,
    overlap=0.25) on the same weights: the SNR of each stem."""
    wav = _music_like(length, seed=length)
    src = tmp_path / "song.wav"
    sf.write(src, wav.T, 44100, subtype="FLOAT")
    want, _ = _demucs(repo, "htdemucs_6s", wav, shifts=0)
    assert main(["separate", str(src), "-n", "htdemucs_6s", "--repo", str(repo), "-o",
                 str(tmp_path / "out"), "--float32", "--overlap", "0.25", "--shifts", "0",
                 "--backend", backend, *extra]) == 0
    snrs = []
    for stem, ref in want.items():
        got, rate = sf.read(tmp_path / "out" / "htdemucs_6s" / "song" / f"{stem}.wav",
                            dtype="float32")
        assert rate == 44100 and got.shape == (length, 2)
        snrs.append(_snr(got.T, ref))
    return snrs


def test_tiny_separate_matches_demucs(tiny_repo: Path, tiny_onnx_root: Path, tmp_path: Path,
                                      _isolated_home: Path) -> None:
    seed_onnx_cache(tiny_onnx_root, _isolated_home)
    snrs = separate_vs_demucs(tiny_repo, tmp_path, "openvino", 8 * 44100 + 1234)
    assert min(snrs) >= 70, snrs


@pytest.mark.slow
def test_real_architecture_separate_matches_demucs(real_repo: Path, real_onnx_root: Path,
                                                   tmp_path: Path, _isolated_home: Path) -> None:
    seed_onnx_cache(real_onnx_root, _isolated_home)
    snrs = separate_vs_demucs(real_repo, tmp_path, "openvino", 5 * 44100)
    assert min(snrs) >= 70, snrs


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no bf16 arithmetic for OpenVINO")
def test_tiny_bf16_stays_within_40_db_of_exact(tiny_repo: Path, tiny_onnx_root: Path,
                                               tmp_path: Path, _isolated_home: Path) -> None:
    """The separation as a whole (the real architecture's core is checked in
    test_onnx_export.py); < 120 dB: bf16 really ran."""
    seed_onnx_cache(tiny_onnx_root, _isolated_home)
    wav = _music_like(3 * 44100, seed=7)
    src = tmp_path / "song.wav"
    sf.write(src, wav.T, 44100, subtype="FLOAT")
    for precision in ("fp32", "bf16"):
        assert main(["separate", str(src), "--repo", str(tiny_repo), "-o",
                     str(tmp_path / precision), "--backend", "openvino", "--shifts", "0",
                     "--float32", "--precision", precision]) == 0
    for stem in STEMS:
        exact = sf.read(tmp_path / f"fp32/htdemucs_6s/song/{stem}.wav")[0]
        fast = sf.read(tmp_path / f"bf16/htdemucs_6s/song/{stem}.wav")[0]
        snr = 10 * np.log10(np.sum(exact**2) / np.sum((fast - exact) ** 2))
        assert 40 <= snr < 120, (stem, snr)


def test_second_start_neither_exports_nor_compiles(tiny_repo: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The first start exports and compiles (with progress); the second loads no checkpoint,
    exports nothing and imports the compiled model from OpenVINO's cache."""
    resolved = resolve_model("htdemucs_6s", tiny_repo)
    events: list[ConvertProgress] = []
    [first] = openvino_backends_for(None, resolved, progress=events.append, threads=1)
    stages = [e.stage for e in events]
    assert stages[0] == "load" and {"export", "save", "compile"} <= set(stages)
    assert events[-1].fraction == 1.0 and not first.from_cache
    monkeypatch.setattr("engine.store.load_model", _boom)
    monkeypatch.setattr("engine.onnx_cache.export_core", _boom)
    events.clear()
    [second] = openvino_backends_for(None, resolved, progress=events.append, threads=1)
    assert second.from_cache and events == []
    assert second._compiled.get_property("INFERENCE_NUM_THREADS") == 1
    spec = np.random.default_rng(0).standard_normal((1, *second.shapes.spec_shape), np.float32)
    wave = np.random.default_rng(1).standard_normal((1, *second.shapes.wave_shape), np.float32)
    for a, b in zip(first.predict(spec, wave), second.predict(spec, wave), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_export_is_exported_again(tiny_repo: Path, tiny_onnx_root: Path,
                                            _isolated_home: Path) -> None:
    """Bytes changed in place (same size) and a cut file: both found, both exported again."""
    root = seed_onnx_cache(tiny_onnx_root, _isolated_home)
    resolved = resolve_model("htdemucs_6s", tiny_repo)
    export = find_onnx(OnnxKey.make("htdemucs_6s", resolved.sha256[0]), root)
    assert export is not None
    good = export.path.read_bytes()
    with open(export.path, "r+b") as f:
        f.seek(len(good) // 2)
        f.write(b"\x00" * 64)
    leftover = root / f".tmp-{export.entry.name}-1-dead"  # a killed export's temp dir
    leftover.mkdir()
    [again] = ensure_model_onnx(resolved, root=root)
    assert not again.hit and again.path.read_bytes() == good  # the export is deterministic
    assert not leftover.exists() and not list(root.glob(".trash-*"))
    with open(again.path, "r+b") as f:
        f.truncate(len(good) - 1)
    [third] = openvino_backends_for(None, resolved)
    assert third.path == again.path and third.path.stat().st_size == len(good)


def test_a_damaged_compiled_model_is_compiled_again(tiny_repo: Path, tiny_onnx_root: Path,
                                                    _isolated_home: Path) -> None:
    seed_onnx_cache(tiny_onnx_root, _isolated_home)
    resolved = resolve_model("htdemucs_6s", tiny_repo)
    [first] = openvino_backends_for(None, resolved)
    [blob] = list(compiled_cache_dir().iterdir())
    size = blob.stat().st_size
    blob.chmod(0o644)  # OpenVINO writes its blobs read-only
    with open(blob, "r+b") as f:
        f.truncate(size // 3)
    [second] = openvino_backends_for(None, resolved)
    assert not first.from_cache and not second.from_cache
    assert blob.stat().st_size == size  # written anew
    [third] = openvino_backends_for(None, resolved)
    assert third.from_cache


WARM_START = textwrap.dedent("""
    import sys
    from engine.cli import main
    rc = main(sys.argv[1:])
    print("RC", rc, "torch" in sys.modules, "demucs" in sys.modules)
""")


def test_a_cached_start_imports_no_torch(tiny_repo: Path, tiny_onnx_root: Path, tmp_path: Path,
                                         _isolated_home: Path) -> None:
    """A fresh process separating with the export cached: torch, demucs and the checkpoint
    are never loaded (torch's import alone is 2.7 s here)."""
    seed_onnx_cache(tiny_onnx_root, _isolated_home)
    src = tmp_path / "song.wav"
    sf.write(src, _music_like(44100, seed=1).T, 44100)
    run = subprocess.run([sys.executable, "-c", WARM_START, "separate", str(src), "--repo",
                          str(tiny_repo), "-o", str(tmp_path / "out"), "--backend", "openvino",
                          "--shifts", "0", "-j", "1"], capture_output=True, text=True,
                         cwd=REPO_ROOT, check=False, timeout=300)
    lines = run.stdout.strip().splitlines()
    assert lines and lines[-1] == "RC 0 False False", run.stdout + run.stderr
    assert len(list((tmp_path / "out" / "htdemucs_6s" / "song").glob("*.wav"))) == 6


def test_bf16_on_a_cpu_without_it_is_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("engine.openvino_backend.bf16_supported", lambda: False)
    assert main(["separate", "x.wav", "--backend", "openvino", "--precision", "bf16"]) == 2
    assert capsys.readouterr().err.strip() == (
        "demixer: This CPU has no bf16 arithmetic for OpenVINO (it needs AVX-512 BF16 or AMX); "
        "use --precision fp32.")


@pytest.mark.parametrize("args, message", [
    (["--backend", "openvino"], "OpenVINO is not installed (pip install openvino); "
                                "use --backend torch."),
    (["--backend", "openvino", "--precision", "mixed"], "OpenVINO runs fp32 or bf16, not mixed."),
])
def test_usage_errors_are_one_line(args: list[str], message: str,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    if "mixed" not in args:
        monkeypatch.setattr("engine.openvino_backend.openvino_available", lambda: False)
    assert main(["separate", "x.wav", *args]) == 2
    assert capsys.readouterr().err.strip() == f"demixer: {message}"


def test_a_file_that_is_not_a_model_is_one_sentence(tiny_repo: Path, tmp_path: Path) -> None:
    """Demixer's metadata but no graph: OpenVINO's many-line error becomes one sentence."""
    from engine.core import core_shapes
    from engine.errors import DemixerError
    from engine.onnx_export import META_PREFIX, metadata_bytes
    from engine.store import load_model

    bag: Any = load_model(resolve_model("htdemucs_6s", tiny_repo))
    shapes = core_shapes(bag.models[0])
    path = tmp_path / "empty.onnx"
    path.write_bytes(metadata_bytes({META_PREFIX + "shapes": shapes.to_json()}))
    with pytest.raises(DemixerError) as err:
        OpenVINOBackend.from_file(path)
    assert str(err.value).startswith(f"OpenVINO cannot compile {path} (")
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
