"""`CoreMLBackend`: batching, compute-unit fallback, and (on macOS) parity with the torch core.

Off macOS, CoreML cannot predict, so the backend's own logic (reading shapes from the package,
cutting and padding batches, falling back from the Neural Engine) runs against a stand-in for
coremltools's model that checks each feed against the package's real input description and
answers with a known function of its input. The `macos` tests run the real thing.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from demucs.pretrained import get_model

from engine import stft
from engine.backends import Backend, TorchBackend
from engine.coreml import backend as coreml_backend
from engine.coreml.backend import (
    CoreMLBackend,
    CoreMLFallbackWarning,
    check_compute_units,
    coreml_backends_for,
)
from engine.coreml.cache import CachedPackage
from engine.coreml.convert import ConvertOptions
from engine.errors import DemixerError
from engine.store import resolve_model
from tests.engine.test_convert import io_signature, load_spec, session_package


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory: pytest.TempPathFactory, tiny_repo: Path) -> CachedPackage:
    """Tiny htdemucs_6s, mixed precision, converted for batch 2 (shared with test_convert)."""
    return session_package(tmp_path_factory, tiny_repo, "tiny-mixed-b2",
                           ConvertOptions(batch=2))[0]


class FakeModel:
    """Stands in for a loaded coremltools model: checks feeds as CoreML would, and answers
    spec_out[:, s] = (s + 1) * spec, time_out[:, s] = (s + 1) * wave."""

    def __init__(self, signature: dict[str, tuple[tuple[int, ...], str]], sources: int,
                 fail: bool = False) -> None:
        self.signature, self.sources, self.fail = signature, sources, fail
        self.feeds: list[dict[str, np.ndarray]] = []

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.fail:
            raise RuntimeError("Error computing NN outputs (ANE)")
        assert set(feeds) == {"spec", "wave"}
        for name, array in feeds.items():
            assert array.shape == self.signature[name][0] and array.dtype == np.float32
        self.feeds.append(feeds)
        gain = np.arange(1, self.sources + 1, dtype=np.float32)
        return {"spec_out": feeds["spec"][:, None] * gain[None, :, None, None, None],
                "time_out": feeds["wave"][:, None] * gain[None, :, None, None]}


@pytest.fixture()
def fake_coreml(monkeypatch: pytest.MonkeyPatch, tiny_package: CachedPackage
                ) -> Callable[..., list[tuple[str, str]]]:
    """Pretend to be on macOS 13+; returns `install(fail_on=...)`, which installs a loader
    and gives the list of (file name, compute units) it is asked to load."""
    signature = io_signature(load_spec(tiny_package.package))
    sources = signature["spec_out"][0][1]

    def install(fail_load: AbstractSet[str] = frozenset(),
                fail_predict: AbstractSet[str] = frozenset(),
                fail_suffix: str | None = None) -> list[tuple[str, str]]:
        loads: list[tuple[str, str]] = []

        def load(path: Path, units: str) -> FakeModel:
            loads.append((path.name, units))
            if units in fail_load or path.suffix == fail_suffix:
                raise RuntimeError(f"cannot load with {units}")
            return FakeModel(signature, sources, fail=units in fail_predict)
        monkeypatch.setattr(coreml_backend, "coreml_supported", lambda: True)
        monkeypatch.setattr(coreml_backend, "_load_predictor", load)
        return loads
    return install


def _chunks(count: int, package: CachedPackage, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    signature = io_signature(load_spec(package.package))
    rng = np.random.default_rng(seed)
    spec = rng.standard_normal((count, *signature["spec"][0][1:]), dtype=np.float32)
    wave = rng.standard_normal((count, *signature["wave"][0][1:]), dtype=np.float32)
    return spec, wave


def test_a_batch_is_cut_to_the_package_size_and_padding_dropped(
        fake_coreml: Callable[..., list[tuple[str, str]]], tiny_package: CachedPackage) -> None:
    fake_coreml()
    backend = CoreMLBackend(tiny_package)
    assert isinstance(backend, Backend)
    assert backend.max_batch == 2 and backend.shapes.frames == 336
    assert backend.shapes.sources == ("drums", "bass", "other", "vocals", "guitar", "piano")
    spec, wave = _chunks(3, tiny_package)
    spec_out, time_out = backend.predict(spec, wave)
    assert spec_out.shape == (3, 6, *spec.shape[1:]) and time_out.shape == (3, 6, *wave.shape[1:])
    assert spec_out.dtype == time_out.dtype == np.float32
    for s in range(6):  # every chunk got its own answer, in order
        np.testing.assert_array_equal(spec_out[:, s], (s + 1) * spec)
        np.testing.assert_array_equal(time_out[:, s], (s + 1) * wave)
    feeds = backend._model.feeds
    assert len(feeds) == 2  # 3 chunks = 2 + (1 padded with a copy of itself)
    np.testing.assert_array_equal(feeds[1]["wave"][1], wave[2])
    with pytest.raises(ValueError, match="expects spec"):
        backend.predict(spec[:, :, :100], wave)


def test_the_compiled_model_is_preferred_and_the_package_backs_it_up(
        fake_coreml: Callable[..., list[tuple[str, str]]], tiny_package: CachedPackage,
        tmp_path: Path) -> None:
    entry = tmp_path / "entry"
    shutil.copytree(tiny_package.entry, entry)
    (entry / "core.mlmodelc").mkdir()
    loads = fake_coreml()
    CoreMLBackend(entry, "cpu_only")
    assert loads == [("core.mlmodelc", "cpu_only")]
    loads = fake_coreml(fail_suffix=".mlmodelc")  # e.g. compiled by an older macOS
    CoreMLBackend(entry, "cpu_only")
    assert loads == [("core.mlmodelc", "cpu_only"), ("core.mlpackage", "cpu_only")]


def test_all_falls_back_to_cpu_and_gpu_with_a_warning(
        fake_coreml: Callable[..., list[tuple[str, str]]], tiny_package: CachedPackage) -> None:
    loads = fake_coreml(fail_load={"all"})
    with pytest.warns(CoreMLFallbackWarning, match="running on CPU and GPU instead"):
        backend = CoreMLBackend(tiny_package)
    assert loads == [("core.mlpackage", "all"), ("core.mlpackage", "cpu_and_gpu")]
    assert (backend.requested_units, backend.compute_units) == ("all", "cpu_and_gpu")

    fake_coreml(fail_predict={"all"})  # loads, but the Neural Engine fails when it runs
    backend = CoreMLBackend(tiny_package)
    with pytest.warns(CoreMLFallbackWarning):
        spec_out, _ = backend.predict(*_chunks(1, tiny_package))
    assert backend.compute_units == "cpu_and_gpu" and np.isfinite(spec_out).all()


def test_explicit_compute_units_do_not_fall_back(
        fake_coreml: Callable[..., list[tuple[str, str]]], tiny_package: CachedPackage) -> None:
    fake_coreml(fail_load={"cpu_only"})
    with pytest.raises(DemixerError, match="cannot load .* with compute units cpu_only"):
        CoreMLBackend(tiny_package, "CPU_ONLY")


def test_compute_unit_names() -> None:
    assert check_compute_units("ALL") == "all"
    assert check_compute_units("cpu-and-gpu") == "cpu_and_gpu"
    with pytest.raises(DemixerError, match="Unknown compute units 'gpu'; use all, cpu_and_gpu"):
        check_compute_units("gpu")


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the message shown off macOS")
def test_off_macos_the_backend_says_so_in_one_line(tiny_package: CachedPackage,
                                                   tiny_repo: Path) -> None:
    message = "CoreML needs macOS 13 or later; use --backend torch"
    with pytest.raises(DemixerError) as err:
        CoreMLBackend(tiny_package)
    assert str(err.value) == message
    with pytest.raises(DemixerError) as err:
        coreml_backends_for(None, resolve_model("htdemucs_6s", tiny_repo))
    assert str(err.value) == message


# --- macOS: the real thing ---------------------------------------------------------------------


def _snr_db(got: np.ndarray, want: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(want.astype(np.float64) ** 2)
                               / max(np.sum((got - want).astype(np.float64) ** 2), 1e-30)))


def _music_input(model: torch.nn.Module, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(spec, wave) of one normalised segment of a music-like signal, as the separator makes."""
    shapes = TorchBackend(model).shapes
    rng = np.random.default_rng(seed)
    t = np.arange(shapes.segment_samples) / shapes.samplerate
    x = 0.3 * np.sin(2 * np.pi * 110 * t) + 0.1 * rng.standard_normal(t.size)
    wave = np.stack([x, 0.8 * x]).astype(np.float32)[None]
    wave = (wave - wave.mean()) / wave.std()
    return stft.to_cac(stft.spec(wave, shapes.nfft)).astype(np.float32), wave


def _worst_source_snr(backend: Backend, reference: TorchBackend,
                      inputs: tuple[np.ndarray, np.ndarray]) -> float:
    got, want = backend.predict(*inputs), reference.predict(*inputs)
    return min(_snr_db(g[:, s], w[:, s]) for g, w in zip(got, want, strict=True)
               for s in range(g.shape[1]))


@pytest.mark.macos
@pytest.mark.slow
@pytest.mark.parametrize(("precision", "units", "min_db"), [("fp32", "cpu_only", 60.0),
                                                            ("mixed", "all", 40.0)])
def test_coreml_core_matches_the_torch_core(tmp_path_factory: pytest.TempPathFactory,
                                            real_repo: Path, precision: str, units: str,
                                            min_db: float) -> None:
    package = session_package(tmp_path_factory, real_repo, f"real-{precision}-b1",
                              ConvertOptions(precision=precision))[0]
    model = get_model("htdemucs_6s", repo=real_repo).models[0].eval()
    backend = CoreMLBackend(package, units)
    assert backend.compute_units == units  # no silent fallback in this test
    snr = _worst_source_snr(backend, TorchBackend(model), _music_input(model))
    print(f"CoreML {precision}/{units} vs torch: worst source {snr:.1f} dB")
    assert snr >= min_db


@pytest.mark.macos
@pytest.mark.slow
def test_timing_all_vs_cpu_and_gpu_vs_torch(tmp_path_factory: pytest.TempPathFactory,
                                            real_repo: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    package = session_package(tmp_path_factory, real_repo, "real-mixed-b1", ConvertOptions())[0]
    model = get_model("htdemucs_6s", repo=real_repo).models[0].eval()
    inputs = _music_input(model)
    backends: list[tuple[str, Any]] = [
        ("coreml all", CoreMLBackend(package, "all")),
        ("coreml cpu_and_gpu", CoreMLBackend(package, "cpu_and_gpu")),
        ("torch cpu", TorchBackend(model))]
    lines = []
    for label, backend in backends:
        backend.predict(*inputs)  # warm-up: the first ANE run compiles
        times = []
        for _ in range(3):
            started = time.perf_counter()
            spec_out, time_out = backend.predict(*inputs)
            times.append(time.perf_counter() - started)
        assert np.isfinite(spec_out).all() and np.isfinite(time_out).all()
        lines.append(f"{label:20s} {np.median(times) * 1000:8.0f} ms per 7.8 s segment")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.macos
@pytest.mark.slow
def test_full_separation_coreml_matches_torch(real_repo: Path, tmp_path: Path) -> None:
    from engine.cli import main

    rate, seconds = 44100, 12
    t = np.arange(rate * seconds) / rate
    rng = np.random.default_rng(3)
    x = 0.3 * np.sin(2 * np.pi * 110 * t) + 0.2 * np.exp(-3 * (t % 0.5)) * np.sin(
        2 * np.pi * 660 * t) + 0.03 * rng.standard_normal(t.size)
    track = tmp_path / "song.wav"
    sf.write(track, np.stack([x, 0.8 * x], 1).astype(np.float32), rate, subtype="FLOAT")
    stems = {}
    for backend in ("coreml", "torch"):
        out = tmp_path / backend
        assert main(["separate", str(track), "--repo", str(real_repo), "--backend", backend,
                     "--float32", "--shifts", "1", "--shift-offsets", "1234",
                     "-o", str(out)]) == 0
        stems[backend] = {p.stem: sf.read(p)[0] for p in out.rglob("*.wav")}
    assert sorted(stems["coreml"]) == sorted(stems["torch"]) and len(stems["torch"]) == 6
    for name, want in stems["torch"].items():
        snr = _snr_db(stems["coreml"][name], want)
        print(f"{name}: CoreML (mixed, all) vs torch {snr:.1f} dB")
        assert snr >= 40.0, name
