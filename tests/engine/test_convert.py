"""Conversion of the core to a CoreML ML Program: I/O, precision per op, metadata, compression.

Conversions are slow (the real htdemucs_6s architecture: about a minute here), so each one that
several tests need happens once per session through `session_package` (also imported by the
other CoreML test modules) and is read back from its spec, never predicted (no macOS here).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from demucs.pretrained import get_model

from engine.core import core_shapes
from engine.coreml import convert
from engine.coreml.cache import CachedPackage, ensure_model_packages
from engine.coreml.convert import (
    CONVERSION_VERSION,
    ConvertOptions,
    ConvertProgress,
    kmeans_lut,
    register_int_fix,
    to_mlprogram,
    trace_core,
)
from engine.errors import Cancelled
from engine.store import resolve_model

_SESSION: dict[str, tuple[CachedPackage, list[ConvertProgress], float]] = {}


def session_package(factory: pytest.TempPathFactory, repo: Path, label: str,
                    options: ConvertOptions) -> tuple[CachedPackage, list[ConvertProgress], float]:
    """htdemucs_6s of `repo` converted once per session and label, in a cache of its own.

    Returns the package, the progress events of its conversion and the wall time it took.
    """
    if label not in _SESSION:
        root = factory.mktemp(f"coreml-{label}")
        events: list[ConvertProgress] = []
        started = time.monotonic()
        [package] = ensure_model_packages(resolve_model("htdemucs_6s", repo), options, root=root,
                                          progress=events.append)
        _SESSION[label] = (package, events, time.monotonic() - started)
    return _SESSION[label]


def tiny_session_package(factory: pytest.TempPathFactory, tiny_repo: Path) -> CachedPackage:
    """The tiny architecture, mixed precision, batch 2 (so batch handling is exercised)."""
    return session_package(factory, tiny_repo, "tiny-mixed-b2", ConvertOptions(batch=2))[0]


@pytest.fixture(scope="session")
def real_package(tmp_path_factory: pytest.TempPathFactory,
                 real_repo: Path) -> tuple[CachedPackage, list[ConvertProgress], float]:
    return session_package(tmp_path_factory, real_repo, "real-mixed-b1", ConvertOptions())


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory, tiny_repo: Path) -> CachedPackage:
    return tiny_session_package(tmp_path_factory, tiny_repo)


# --- reading a package back --------------------------------------------------------------------


def load_spec(package: Path) -> Any:
    import coremltools as ct

    return ct.utils.load_spec(str(package))


def io_signature(spec: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, dtype name)} of the model's inputs and outputs."""
    from coremltools.proto import FeatureTypes_pb2 as ft

    found = {}
    for feature in [*spec.description.input, *spec.description.output]:
        array = feature.type.multiArrayType
        dtype = ft.ArrayFeatureType.ArrayDataType.Name(array.dataType)
        found[feature.name] = (tuple(int(d) for d in array.shape), dtype)
    return found


def op_dtypes(spec: Any) -> Counter[tuple[str, str]]:
    """How many MIL ops of each (type, output dtype) the program's main function has."""
    from coremltools.proto import MIL_pb2

    main = spec.mlProgram.functions["main"]
    block = main.block_specializations[main.opset]
    counts: Counter[tuple[str, str]] = Counter()
    for op in block.operations:
        for out in op.outputs:
            counts[(op.type, MIL_pb2.DataType.Name(out.type.tensorType.dataType))] += 1
    return counts


def dtypes_of(counts: Counter[tuple[str, str]], op_type: str) -> set[str]:
    return {dtype for (kind, dtype) in counts if kind == op_type}


def expect_io(spec: Any, model: torch.nn.Module, batch: int) -> None:
    s = core_shapes(model)
    n = len(s.sources)
    assert io_signature(spec) == {
        "spec": ((batch, *s.spec_shape), "FLOAT32"),
        "wave": ((batch, *s.wave_shape), "FLOAT32"),
        "spec_out": ((batch, n, *s.spec_shape), "FLOAT32"),
        "time_out": ((batch, n, *s.wave_shape), "FLOAT32"),
    }


# --- the real architecture (once) -----------------------------------------------------------


@pytest.mark.slow
def test_real_architecture_converts_with_mixed_precision(
        real_package: tuple[CachedPackage, list[ConvertProgress], float], real_repo: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    package, _, seconds = real_package
    model = get_model("htdemucs_6s", repo=real_repo).models[0]
    spec = load_spec(package.package)
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion >= 7  # iOS 16 / macOS 13
    expect_io(spec, model, batch=1)
    counts = op_dtypes(spec)
    # The ops the issue names keep FP32; the bulk of the work (convolutions) runs in FP16.
    assert dtypes_of(counts, "softmax") == {"FLOAT32"}
    assert dtypes_of(counts, "layer_norm") == {"FLOAT32"}
    for kind in ("matmul", "reduce_mean", "sqrt", "real_div", "square"):
        assert dtypes_of(counts, kind) == {"FLOAT32"}, kind
    assert dtypes_of(counts, "conv") == {"FLOAT16"}
    assert dtypes_of(counts, "conv_transpose") == {"FLOAT16"}
    assert counts[("conv", "FLOAT16")] > 50 and counts[("softmax", "FLOAT32")] >= 5
    with capsys.disabled():
        print(f"\n[real htdemucs_6s] converted (mixed, batch 1) in {seconds:.1f} s; "
              f"package {package.package_bytes / 1e6:.1f} MB", file=sys.stderr)
    assert 60e6 < package.package_bytes < 160e6  # ~42 M parameters, mostly FP16


@pytest.mark.slow
def test_real_package_metadata(real_package: tuple[CachedPackage, list[ConvertProgress], float],
                               real_repo: Path) -> None:
    package = real_package[0]
    resolved = resolve_model("htdemucs_6s", real_repo)
    meta = dict(load_spec(package.package).description.metadata.userDefined)
    import coremltools

    assert {k: meta[k] for k in (
        "demixer.model", "demixer.sources", "demixer.samplerate", "demixer.segment",
        "demixer.segment_samples", "demixer.checkpoint_sha256", "demixer.precision",
        "demixer.compression", "demixer.batch", "demixer.coremltools_version",
        "demixer.conversion_version")} == {
        "demixer.model": "htdemucs_6s",
        "demixer.sources": "drums,bass,other,vocals,guitar,piano",
        "demixer.samplerate": "44100", "demixer.segment": "39/5",
        "demixer.segment_samples": "343980",
        "demixer.checkpoint_sha256": resolved.sha256[0], "demixer.precision": "mixed",
        "demixer.compression": "none", "demixer.batch": "1",
        "demixer.coremltools_version": coremltools.__version__,
        "demixer.conversion_version": str(CONVERSION_VERSION),
    }
    assert convert.shapes_from_metadata(meta) == core_shapes(
        get_model("htdemucs_6s", repo=real_repo).models[0])


# --- the tiny architecture ----------------------------------------------------------------------


def test_tiny_converts_at_batch_two_with_progress_by_stage(tiny_package: CachedPackage,
                                                           tiny_repo: Path,
                                                           tmp_path_factory: Any) -> None:
    model = get_model("htdemucs_6s", repo=tiny_repo).models[0]
    expect_io(load_spec(tiny_package.package), model, batch=2)
    _, events, _ = session_package(tmp_path_factory, tiny_repo, "tiny-mixed-b2",
                                   ConvertOptions(batch=2))
    stages = [e.stage for e in events]
    # No compression asked, no macOS here: no optimise, no compile stage.
    assert list(dict.fromkeys(stages)) == ["load", "trace", "convert", "save"]
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(e.message for e in events)


@pytest.fixture(scope="module")
def tiny_traced(tiny_repo: Path) -> tuple[Any, Any]:
    model = get_model("htdemucs_6s", repo=tiny_repo).models[0]
    assert torch.backends.mha.get_fastpath_enabled()
    traced, shapes = trace_core(model)
    return traced, shapes


def test_tracing_disables_the_mha_fast_path_only_while_tracing(tiny_traced: tuple[Any, Any]
                                                               ) -> None:
    traced, _ = tiny_traced
    graph = str(traced.inlined_graph)
    assert "aten::scaled_dot_product_attention" in graph  # attention was traced...
    assert "_native_multi_head_attention" not in graph  # ...without the fast path
    assert torch.backends.mha.get_fastpath_enabled()  # and the setting is back


def test_int_fix_is_registered_once() -> None:
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    register_int_fix()  # whether or not an earlier conversion registered it
    fix = _TORCH_OPS_REGISTRY.name_to_func_mapping["int"]
    assert fix.__module__ == "engine.coreml.convert"
    assert register_int_fix() is False
    assert _TORCH_OPS_REGISTRY.name_to_func_mapping["int"] is fix


def test_fp32_precision_with_6bit_palettization(tiny_traced: tuple[Any, Any],
                                                tiny_package: CachedPackage,
                                                tmp_path: Path) -> None:
    """One conversion checks two things: fp32 computes nothing in FP16, and 6-bit palettized
    weights (our k-means look-up tables) shrink the package below the FP16 one."""
    traced, shapes = tiny_traced
    events: list[str] = []
    with convert.quiet_conversion(lambda desc, i, n, item: events.append(str(item))):
        mlmodel = to_mlprogram(traced, shapes, 1, "fp32", compress="6bit")
    assert "compression::palettize_weights" in events
    out = tmp_path / "fp32-6bit.mlpackage"
    mlmodel.save(str(out))
    counts = op_dtypes(load_spec(out))
    assert "FLOAT16" not in {dtype for _, dtype in counts}
    assert counts[("constexpr_lut_to_dense", "FLOAT32")] > 10
    assert dtypes_of(counts, "conv") == {"FLOAT32"}
    # 6-bit weights make this FP32 package smaller than the FP16 (mixed) one, although every
    # other constant here is FP32, twice as wide. (The tiny model's non-weight constants, e.g.
    # the transformer's sine tables, are most of its package, so no stronger ratio holds; the
    # real architecture's 6-bit package is about a third of the mixed one.)
    assert convert.directory_bytes(out) < tiny_package.package_bytes


def test_cancel_stops_a_conversion_midway(tiny_traced: tuple[Any, Any]) -> None:
    traced, shapes = tiny_traced
    cancel, events = threading.Event(), []

    def progress(event: ConvertProgress) -> None:
        events.append(event)
        cancel.set()  # at the first sign of progress inside coremltools

    watcher = convert._PipelineProgress(progress, cancel, ConvertOptions())
    with pytest.raises(Cancelled), convert.quiet_conversion(watcher):
        to_mlprogram(traced, shapes, 1, "mixed")
    assert [e.stage for e in events] == ["convert"] and 0.35 < events[0].fraction < 0.8
    from coremltools.converters.mil.mil.passes import pass_pipeline
    from tqdm import tqdm

    assert pass_pipeline.tqdm is tqdm  # coremltools is left as it was found


def test_precision_modes_map_to_coremltools() -> None:
    import coremltools as ct

    assert convert._compute_precision("fp32") == ct.precision.FLOAT32
    assert convert._compute_precision("fp16") == ct.precision.FLOAT16
    mixed = convert._compute_precision("mixed")
    assert isinstance(mixed, ct.transform.FP16ComputePrecision)
    assert mixed.op_selector is convert.keep_fp16


def test_unknown_options_are_one_sentence() -> None:
    from engine.errors import DemixerError

    with pytest.raises(DemixerError, match="Unknown precision 'fp8'; use mixed, fp16, fp32"):
        ConvertOptions(precision="fp8")
    with pytest.raises(DemixerError, match="Unknown compression '4bit'"):
        ConvertOptions(compress="4bit")
    with pytest.raises(DemixerError, match="batch size must be between 1 and 64"):
        ConvertOptions(batch=0)


# --- compression ------------------------------------------------------------------------------


def test_kmeans_lut_beats_a_uniform_grid() -> None:
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal(20000) * 0.05).astype(np.float16)
    weight[:3] = [1.0, -0.8, 0.9]  # a few outliers, as real layers have
    lut, indices = kmeans_lut(weight, nbits=6)
    assert lut.shape == (64,) and lut.dtype == np.float16 and indices.dtype == np.uint8
    assert indices.max() < 64 and indices.shape == (weight.size,)
    error = np.abs(lut[indices].astype(np.float32) - weight).mean()
    grid = np.linspace(weight.min(), weight.max(), 64, dtype=np.float32)
    uniform = np.abs(grid[np.abs(weight[:, None] - grid).argmin(1)] - weight).mean()
    assert error < uniform / 3
    few = np.array([0.5, -0.25, 0.5, 0.0], np.float16)  # fewer values than entries: exact
    lut, indices = kmeans_lut(few)
    assert np.array_equal(lut[indices], few)
