"""The MLX backend: its core equals the torch core, `demixer separate --backend mlx` equals
demucs, its weight cache converts once and never unpickles the checkpoint again.

MLX's CPU build runs these on Linux (slowly: about a minute per real-architecture segment), so
real-architecture checks use a shortened segment (the model's own `segment`, as a bag's
override would set it) except the one end-to-end separation.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine import stft
from engine.core import HTDemucsCore
from engine.errors import DemixerError
from engine.store import ResolvedModel, load_model, resolve_model
from tests.engine.test_parity import LENGTHS, _check, _music_like, _snr

mx = pytest.importorskip("mlx.core", reason="MLX is not installed (tests/run.sh installs it)")

from engine import mlx_cache, mlx_convert  # noqa: E402  (they need MLX at call time only)
from engine.mlx_backend import MLXBackend, mlx_available, mlx_backends_for  # noqa: E402
from engine.mlx_core import sin_embedding_1d, sin_embedding_2d  # noqa: E402


def _inputs(backend: MLXBackend, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of music-like chunks, as the separator feeds them (normalised, then STFT)."""
    s = backend.shapes
    wave = np.stack([_music_like(s.segment_samples, seed + i) for i in range(batch)])
    wave = (wave - wave.mean()) / wave.std()
    return stft.to_cac(stft.spec(wave, s.nfft)), wave


def _torch_core(model: torch.nn.Module, spec: np.ndarray,
                wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        out = HTDemucsCore(model).eval()(torch.from_numpy(spec), torch.from_numpy(wave))
    return out[0].numpy(), out[1].numpy()


def _relative_errors(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> list[float]:
    """Per output: the largest absolute difference over the largest absolute value."""
    return [float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(got, want, strict=True)]


def _stems(backend: MLXBackend, out: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The core's outputs as the separator turns them into stems: iSTFT + time branch."""
    return stft.ispec_cac(out[0], backend.shapes.segment_samples) + out[1]


def _worst_stem_snr(got: np.ndarray, want: np.ndarray) -> float:
    return min(_snr(got[:, i], want[:, i]) for i in range(want.shape[1]))


def test_mlx_is_available_here() -> None:
    """tests/run.sh installs MLX's CPU build on Linux: the backend is tested, not skipped."""
    assert mlx_available()


@pytest.mark.parametrize(("name", "batch"), [("htdemucs_6s", 1), ("htdemucs", 2)])
def test_tiny_core_equals_torch_core(tiny_repo: Path, name: str, batch: int) -> None:
    resolved = resolve_model(name, tiny_repo)
    bag: Any = load_model(resolved)
    backend = mlx_backends_for(bag, resolved)[0]
    assert backend.shapes == HTDemucsCore(bag.models[0]).shapes
    spec, wave = _inputs(backend, batch, seed=batch)
    got = backend.predict(spec, wave)
    want = _torch_core(bag.models[0], spec, wave)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert got[0].dtype == got[1].dtype == np.float32
    assert max(_relative_errors(got, want)) <= 1e-4


def _short_real(real_repo: Path, seconds: int = 1) -> tuple[Any, ResolvedModel, Any]:
    """The real htdemucs_6s architecture with its segment cut to `seconds` (MLX's CPU build
    needs about a minute for a full 7.8 s segment), and its cached MLX weights."""
    resolved = resolve_model("htdemucs_6s", real_repo)
    model: Any = load_model(resolved)
    model = model.models[0]
    model.segment = Fraction(seconds)
    cached = mlx_cache.ensure_core(resolved.sha256[0], lambda: model)
    return model, resolved, cached


def test_positional_embeddings_equal_demucs() -> None:
    """Up to float32 rounding (torch's pow and exp differ from numpy's by an ulp): one ulp
    of a phase of up to 1344 radians is 1.2e-4 (the core still matches to 1e-6)."""
    from demucs.transformer import create_2d_sin_embedding, create_sin_embedding
    from einops import rearrange

    want2d = rearrange(create_2d_sin_embedding(48, 8, 336, max_period=10000.0),
                       "b c fr t1 -> b (t1 fr) c")[0].numpy()
    assert np.abs(sin_embedding_2d(48, 8, 336, 10000.0) - want2d).max() < 5e-5
    want1d = create_sin_embedding(1344, 48, max_period=10000.0)[:, 0].numpy()
    assert np.abs(sin_embedding_1d(1344, 48, 10000.0) - want1d).max() < 2.5e-4


def test_long_reductions_are_accurate() -> None:
    """MLX's CPU build sums a long axis one value after another (8 M values of mean 0.5 and
    std 3: std off by 1e-3); the blocked two-pass statistics stay within 1e-6."""
    from engine.mlx_core import mean_var

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 4, 2048, 1000)) * 3 + 0.5).astype(np.float32)
    mean, var = mean_var(mx.array(x), (1, 2, 3), ddof=1)
    want = x.astype(np.float64)
    assert abs(np.array(mean).item() / want.mean() - 1) < 1e-6
    assert abs(np.array(var).item() / want.var(ddof=1) - 1) < 1e-6


# --- demixer separate --backend mlx vs demucs.api.Separator -------------------------------


@pytest.mark.parametrize("length", list(LENGTHS.values()), ids=list(LENGTHS))
def test_tiny_separate_equals_demucs(tiny_repo: Path, tmp_path: Path, length: int) -> None:
    """Shorter than a segment, exactly one, several with a remainder: >= 70 dB every stem."""
    _check(tiny_repo, "htdemucs_6s", tmp_path, length, shifts=0, backend="mlx")


def test_tiny_separate_two_shifts_equals_demucs(tiny_repo: Path, tmp_path: Path) -> None:
    """--shifts 2 with demucs's own random offsets (captured, given as --shift-offsets)."""
    _check(tiny_repo, "htdemucs_6s", tmp_path, LENGTHS["short"], shifts=2, backend="mlx")


def test_tiny_bag_separate_equals_demucs(tiny_repo: Path, tmp_path: Path) -> None:
    """htdemucs_ft: one MLX backend per member, weighed as demucs weighs them."""
    _check(tiny_repo, "htdemucs_ft", tmp_path, LENGTHS["short"], shifts=0, backend="mlx")


# The real architecture through `demixer separate --backend mlx` (one full segment, about two
# minutes of MLX's CPU build) left the timed suite: the real core is checked against torch's
# below (test_real_architecture_core_and_reduced_precisions) and the separate path around it
# by the tiny model's parity tests above; on a Mac, test_metal_real_architecture_equals_torch.


# --- the weight cache ----------------------------------------------------------------------


class _Conversions:
    """Counts `describe` calls (conversions) and forbids unpickling when asked to."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.monkeypatch = monkeypatch
        real = mlx_convert.describe

        def spy(model: Any) -> Any:
            self.count += 1
            return real(model)
        monkeypatch.setattr(mlx_convert, "describe", spy)

    def forbid_checkpoint_loading(self) -> None:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the checkpoint was unpickled")
        self.monkeypatch.setattr(torch, "load", refuse)
        self.monkeypatch.setattr("engine.store.load_model", refuse)


def _first_outputs(backend: MLXBackend) -> tuple[np.ndarray, np.ndarray]:
    spec, wave = _inputs(backend, 1, seed=9)
    return backend.predict(spec, wave)


def test_second_start_loads_the_cache_without_the_checkpoint(
        tiny_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conversions = _Conversions(monkeypatch)
    resolved = resolve_model("htdemucs_6s", tiny_repo)
    first = mlx_backends_for(None, resolved)
    assert conversions.count == 1
    conversions.forbid_checkpoint_loading()
    again = mlx_backends_for(None, resolved)
    assert conversions.count == 1
    assert again[0].shapes == first[0].shapes
    for a, b in zip(_first_outputs(first[0]), _first_outputs(again[0]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_cache_entries_are_named_by_checkpoint_sha256(tiny_repo: Path) -> None:
    six = resolve_model("htdemucs_6s", tiny_repo)
    bag = resolve_model("htdemucs_ft", tiny_repo)
    mlx_backends_for(None, six)
    mlx_backends_for(None, bag)
    names = {p.name for p in mlx_cache.cache_root().iterdir()}
    for sha in six.sha256 + bag.sha256:
        stem = mlx_cache.entry_stem(sha)
        assert stem.startswith(sha) and {f"{stem}.json", f"{stem}.safetensors"} <= names
    assert len(names) == 2 * 5  # a pair per checkpoint, nothing else left behind


@pytest.mark.parametrize("damage", ["flip-weights", "truncate-weights", "garble-manifest"])
def test_a_damaged_cache_entry_is_rebuilt(tiny_repo: Path, monkeypatch: pytest.MonkeyPatch,
                                          damage: str) -> None:
    resolved = resolve_model("htdemucs_6s", tiny_repo)
    conversions = _Conversions(monkeypatch)
    want = _first_outputs(mlx_backends_for(None, resolved)[0])
    stem = mlx_cache.entry_stem(resolved.sha256[0])
    weights = mlx_cache.cache_root() / f"{stem}.safetensors"
    manifest = mlx_cache.cache_root() / f"{stem}.json"
    data = bytearray(weights.read_bytes())
    if damage == "flip-weights":
        data[len(data) // 2] ^= 0x40
        weights.write_bytes(bytes(data))
    elif damage == "truncate-weights":
        weights.write_bytes(bytes(data[: len(data) // 3]))
    else:
        manifest.write_text(manifest.read_text()[:100])
    assert isinstance(mlx_cache.check_entry(resolved.sha256[0]), str)
    got = _first_outputs(mlx_backends_for(None, resolved)[0])
    assert conversions.count == 2
    assert isinstance(mlx_cache.check_entry(resolved.sha256[0]), mlx_cache.CachedCore)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_weights_that_do_not_fit_the_network_are_one_sentence(tiny_repo: Path) -> None:
    """A manifest whose architecture no longer matches its weights (edited, or written by
    another version) is refused with the file's name, not a traceback."""
    import json

    resolved = resolve_model("htdemucs_6s", tiny_repo)
    mlx_backends_for(None, resolved)
    manifest = mlx_cache.cache_root() / f"{mlx_cache.entry_stem(resolved.sha256[0])}.json"
    data = json.loads(manifest.read_text())
    data["spec"]["bottom_channels"] = 16
    manifest.write_text(json.dumps(data))
    with pytest.raises(DemixerError, match=r"The MLX weights .*safetensors do not fit") as err:
        mlx_backends_for(None, resolved)
    assert "\n" not in str(err.value)


# --- reduced precisions ----------------------------------------------------------------------


def _precision_snrs(backends: dict[str, MLXBackend]) -> dict[str, float]:
    """Worst-stem SNR of each precision against fp32, on the same music-like chunk."""
    spec, wave = _inputs(backends["fp32"], 1, seed=11)
    want = _stems(backends["fp32"], backends["fp32"].predict(spec, wave))
    snrs = {}
    for precision, backend in backends.items():
        got = _stems(backend, backend.predict(spec, wave))
        assert np.isfinite(got).all()
        snrs[precision] = _worst_stem_snr(got, want)
    print({k: round(v, 1) for k, v in snrs.items()})
    return snrs


def test_tiny_reduced_precisions(tiny_repo: Path) -> None:
    """Tiny htdemucs_6s, 2 s segment, worst stem vs fp32, measured: mixed 139.7 dB, fp16
    65.2 dB.
    (Random weights: the transformer's LayerScale of 1e-4 hides most attention error.)"""
    resolved = resolve_model("htdemucs_6s", tiny_repo)
    bag: Any = load_model(resolved)
    cached = mlx_cache.ensure_core(resolved.sha256[0], lambda: bag.models[0])
    backends = {p: MLXBackend(cached.spec, cached.load(), precision=p, segment=2)
                for p in ("fp32", "mixed", "fp16")}
    assert backends["fp16"].name == "mlx-fp16"
    snrs = _precision_snrs(backends)
    assert snrs["mixed"] >= 135 and snrs["fp16"] >= 62


@pytest.mark.slow
def test_real_architecture_core_and_reduced_precisions(real_repo: Path) -> None:
    """The real htdemucs_6s architecture (1 s segment, one chunk): fp32 equals the torch core
    (relative error <= 1e-4 per output; measured 7.5e-7 on a full segment), and the reduced
    precisions' worst stem vs fp32, measured: mixed 128.6 dB, fp16 59.5 dB."""
    model, _, cached = _short_real(real_repo)
    backends = {p: MLXBackend(cached.spec, cached.load(), precision=p, segment=1)
                for p in ("fp32", "mixed", "fp16")}
    assert backends["fp32"].shapes == HTDemucsCore(model).shapes
    spec, wave = _inputs(backends["fp32"], 1, seed=5)
    errors = _relative_errors(backends["fp32"].predict(spec, wave),
                              _torch_core(model, spec, wave))
    assert max(errors) <= 1e-4, errors
    snrs = _precision_snrs(backends)
    assert snrs["mixed"] >= 120 and snrs["fp16"] >= 56


def test_unknown_precision_is_refused(tiny_repo: Path) -> None:
    with pytest.raises(DemixerError, match="precision 'bf16'.*fp32, mixed, fp16"):
        mlx_backends_for(None, resolve_model("htdemucs_6s", tiny_repo), precision="bf16")


# --- usage errors and unsupported models -----------------------------------------------------


def _separate(tiny_repo: Path, tmp_path: Path, *extra: str,
              capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from engine.cli import main

    src = tmp_path / "song.wav"
    import soundfile as sf

    sf.write(src, _music_like(44100, 1).T, 44100)
    code = main(["separate", str(src), "--repo", str(tiny_repo), "-o", str(tmp_path / "out"),
                 *extra])
    return code, capsys.readouterr().err


def test_backend_mlx_without_mlx_is_a_usage_error(tiny_repo: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("engine.mlx_backend.mlx_available", lambda: False)
    code, err = _separate(tiny_repo, tmp_path, "--backend", "mlx", capsys=capsys)
    assert code == 2
    assert err.count("\n") == 1 and "MLX is not installed" in err
    assert not (tmp_path / "out").exists()


def test_a_precision_mlx_lacks_is_a_usage_error(tiny_repo: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _separate(tiny_repo, tmp_path, "--backend", "mlx", "--precision", "bf16",
                          capsys=capsys)
    assert code == 2 and "The mlx backend has no precision 'bf16'" in err


def _tiny_htdemucs(**options: Any) -> torch.nn.Module:
    from demucs.htdemucs import HTDemucs

    from engine.testmodel import architecture_kwargs

    kwargs = dict(architecture_kwargs(tiny=True), segment=Fraction(1))
    kwargs.update(options)
    torch.manual_seed(7)
    return HTDemucs(sources=["drums", "bass", "other", "vocals"], **kwargs).eval()


@pytest.mark.parametrize(("options", "named"), [
    ({"t_emb": "scaled"}, "positional embedding 'scaled'"),
    ({"multi_freqs": [0.5]}, "MultiWrap"),
    ({"depth": 5}, "merge"),
    ({"cac": False}, "complex-as-channels"),
])
def test_unsupported_options_are_named(options: dict[str, Any], named: str) -> None:
    with pytest.raises(DemixerError, match=named):
        mlx_convert.describe(_tiny_htdemucs(**options))


@pytest.mark.parametrize("options", [
    # norms in the encoders/decoders, post-norm transformer with ReLU and no LayerScale (so
    # the transformer's output is not scaled down to 1e-4), cross layer first, 3x3 encoder
    # rewrite, no bottom channels
    dict(norm_starts=2, t_norm_first=False, t_gelu=False, t_layer_scale=False,
         t_cross_first=True, context_enc=1, bottom_channels=0),
    # group norms in the transformer, no input LayerNorm but a group one, no rewrite, DConv
    # in the encoders only, no frequency embedding, other positional settings
    dict(t_group_norm=True, t_norm_in=False, t_norm_in_group=True, rewrite=False,
         dconv_mode=1, freq_emb=0, t_layer_scale=False, t_weight_pos_embed=0.5,
         t_max_period=2000.0),
], ids=["post-norm-relu", "group-norms"])
def test_architecture_options_follow_the_model(options: dict[str, Any]) -> None:
    """Every option is read from the model: variants of the tiny model (1 s segment) still
    equal the torch core."""
    model = _tiny_htdemucs(**options)
    spec_arch, weights = mlx_convert.describe(model)
    backend = MLXBackend(spec_arch, {k: mx.array(v) for k, v in weights.items()})
    spec, wave = _inputs(backend, 2, seed=3)
    errors = _relative_errors(backend.predict(spec, wave), _torch_core(model, spec, wave))
    assert max(errors) <= 1e-4, errors


def _best_of(backend: MLXBackend, spec: np.ndarray, wave: np.ndarray, rounds: int = 3) -> float:
    backend.predict(spec, wave)  # warm-up: Metal kernels load, buffers are allocated
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        backend.predict(spec, wave)
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.macos
def test_metal_real_architecture_equals_torch(real_repo: Path) -> None:
    """On an Apple Silicon Mac MLX runs on the GPU: >= 70 dB from torch fp32 on every stem of
    a real-architecture segment, called from another thread as the separator does. Prints the
    time per segment (best of 3 after a warm-up) of fp32, fp32 with mx.compile, mixed and
    fp16, with their SNR against fp32: the figures the CPU build cannot give."""
    assert mx.default_device() == mx.gpu
    resolved = resolve_model("htdemucs_6s", real_repo)
    bag: Any = load_model(resolved)
    backend = mlx_backends_for(bag, resolved)[0]
    assert not backend.host_bound
    spec, wave = _inputs(backend, 1, seed=13)
    with ThreadPoolExecutor(1) as other:  # as the separator's job thread calls it
        got = other.submit(backend.predict, spec, wave).result()
    want = _torch_core(bag.models[0], spec, wave)
    snr = _worst_stem_snr(_stems(backend, got), _stems(backend, want))
    print(f"\nMLX fp32 on Metal: worst stem {snr:.1f} dB from torch fp32")
    cached = mlx_cache.ensure_core(resolved.sha256[0], lambda: bag.models[0])
    variants = {"fp32": backend,
                "fp32 compiled": MLXBackend(cached.spec, cached.load(), compile=True),
                "mixed": MLXBackend(cached.spec, cached.load(), precision="mixed"),
                "fp16": MLXBackend(cached.spec, cached.load(), precision="fp16")}
    for label, variant in variants.items():
        seconds = _best_of(variant, spec, wave)
        quality = _worst_stem_snr(_stems(variant, variant.predict(spec, wave)),
                                  _stems(backend, got))
        print(f"MLX {label} on Metal: {seconds:.3f} s per 7.8 s segment, "
              f"{quality:.1f} dB from fp32")
    assert snr >= 70
