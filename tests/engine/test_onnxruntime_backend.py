"""`--backend onnxruntime`: parity with demucs, the export cache, threads, usage errors, and
the CoreML execution provider (macOS only)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.onnxruntime_backend import available_providers, onnxruntime_backends_for
from engine.store import resolve_model
from tests.conftest import seed_onnx_cache
from tests.engine.test_openvino_backend import _boom, separate_vs_demucs


def test_tiny_separate_matches_demucs(tiny_repo: Path, tiny_onnx_root: Path, tmp_path: Path,
                                      _isolated_home: Path) -> None:
    seed_onnx_cache(tiny_onnx_root, _isolated_home)
    snrs = separate_vs_demucs(tiny_repo, tmp_path, "onnxruntime", 8 * 44100 + 1234)
    assert min(snrs) >= 70, snrs


def test_a_cached_export_loads_no_checkpoint(tiny_repo: Path, tiny_onnx_root: Path,
                                             _isolated_home: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    seed_onnx_cache(tiny_onnx_root, _isolated_home)
    monkeypatch.setattr("engine.store.load_model", _boom)
    monkeypatch.setattr("engine.onnx_cache.export_core", _boom)
    events: list[object] = []
    [backend] = onnxruntime_backends_for(None, resolve_model("htdemucs_6s", tiny_repo),
                                         progress=events.append, threads=1)
    assert events == [] and backend.host_bound and backend.name == "onnxruntime"
    options = backend._session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert not options.enable_mem_pattern and options.enable_cpu_mem_arena
    assert backend._session.get_providers() == ["CPUExecutionProvider"]


def test_bf16_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["separate", "x.wav", "--backend", "onnxruntime", "--precision", "bf16"]) == 2
    assert capsys.readouterr().err.strip() == (
        "demixer: ONNX Runtime runs fp32 only, not bf16; use --backend openvino --precision "
        "bf16 for a faster mode.")


@pytest.mark.skipif(sys.platform == "darwin", reason="the CoreML provider exists on macOS")
def test_coreml_provider_off_macos_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert "coreml" not in available_providers()
    assert main(["separate", "x.wav", "--backend", "onnxruntime-coreml"]) == 2
    assert capsys.readouterr().err.strip() == (
        "demixer: ONNX Runtime has no CoreML execution provider on this machine (macOS only); "
        "use --backend onnxruntime.")


@pytest.mark.macos
def test_coreml_provider_runs_the_export(tiny_repo: Path, tiny_onnx_root: Path,
                                         _isolated_home: Path) -> None:  # pragma: no cover
    """macOS: the CoreML execution provider runs the tiny export within the fast mode's gate
    of the CPU provider (it computes in FP16 on the Neural Engine / GPU)."""
    seed_onnx_cache(tiny_onnx_root, _isolated_home)
    resolved = resolve_model("htdemucs_6s", tiny_repo)
    assert "coreml" in available_providers()
    [cpu] = onnxruntime_backends_for(None, resolved)
    [coreml] = onnxruntime_backends_for(None, resolved, provider="coreml")
    assert coreml.name == "onnxruntime-coreml" and not coreml.host_bound
    assert coreml._session.get_providers()[0] == "CoreMLExecutionProvider"
    rng = np.random.default_rng(0)
    spec = rng.standard_normal((1, *cpu.shapes.spec_shape), np.float32)
    wave = rng.standard_normal((1, *cpu.shapes.wave_shape), np.float32)
    for got, want in zip(coreml.predict(spec, wave), cpu.predict(spec, wave), strict=True):
        snr = 10 * np.log10(np.sum(want.astype(np.float64) ** 2)
                            / np.sum((got.astype(np.float64) - want) ** 2))
        assert snr >= 40, snr
