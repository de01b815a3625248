"""`demixer --self-test`: prove that this installation (or frozen app) can separate a song.

Needs no display, no network and no model download. It writes a tiny random-weight model to a
temporary folder, generates a 3-second 48 kHz stereo signal, and runs it through the app's own
engine path: decode (libsndfile, soxr to 44.1 kHz) -> `SeparationJob` -> `StemBuffers` -> stem
files. A random-weight model's stems do not add up to the input, so the checks are ones that
hold for any weights: the stems equal demucs's own `apply_model` on the same checkpoint and
the same decoded mix, their sum equals demucs's sum, the written files equal the stem buffers,
and every length is exact. Around that it checks what a frozen app most often lacks: the CA
bundle for HTTPS, the data files of the model catalogue and of demucs, the native libraries
(FFmpeg through PyAV, LAME, libsndfile, soxr), CoreML conversion (coremltools), an MLX
separation checked against demucs (the Apple GPU on a Mac, MLX's CPU build on Linux; a line
says so where MLX is not installed), and on macOS a CoreML separation.

Each check prints one line; the exit code is 0 when all pass, 1 otherwise. `main` takes extra
checks from the layer above, which `engine` may not make itself: the launcher adds the window
check (`app.doctor`), the frozen app also its Qt and PortAudio checks.
"""

from __future__ import annotations

import os
import platform
import shutil
import ssl
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

MODEL = "htdemucs_6s"  # the default model: six stems
RATE = 48000  # the test file's rate: not the model's, so decoding resamples
SECONDS = 3
REFERENCE_SNR_DB = 60.0  # engine vs demucs on the same weights (tests/engine/test_parity: 70)
COREML_SNR_DB = 20.0  # CoreML mixed FP16 vs PyTorch FP32 on the same weights (macOS only)
MIN_CA_CERTS = 50  # certifi ships ~140 roots; a handful means the wrong file


class CheckFailed(Exception):
    """A check's expectation did not hold; the message says what was found."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def snr_db(got: np.ndarray, want: np.ndarray) -> float:
    """Signal-to-error ratio of `got` against `want`, in dB (inf when equal)."""
    err = float(np.sum((np.asarray(got, np.float64) - want) ** 2))
    power = float(np.sum(np.asarray(want, np.float64) ** 2))
    return float("inf") if err == 0 else 10 * np.log10(max(power, 1e-30) / err)


@dataclass
class Outcome:
    name: str
    ok: bool
    detail: str
    seconds: float


Check = tuple[str, Callable[[], str]]


class NotRun(Exception):
    """A check needs the result of an earlier check that failed."""


@dataclass
class Context:
    """What the checks share: the temp folder and the results of earlier checks."""

    workdir: Path
    values: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            raise NotRun(f"needs the {key!r} of an earlier check, which failed") from None

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = value


# --- the signal ---------------------------------------------------------------------------


def test_signal(rate: int, frames: int) -> np.ndarray:
    """(2, frames) float32: a different sum of sines on each channel, peak below 0.5."""
    t = np.arange(frames) / rate
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.15 * np.sin(2 * np.pi * 1375 * t)
    right = 0.25 * np.sin(2 * np.pi * 330 * t + 1.0) + 0.1 * np.sin(2 * np.pi * 5000 * t)
    return np.stack([left, right]).astype(np.float32)


# --- environment checks --------------------------------------------------------------------


def check_ca_bundle() -> str:
    """certifi's CA file exists (inside the bundle when frozen) and an SSL context loads it,
    as engine.download does: without it a frozen Mac app fails HTTPS with
    CERTIFICATE_VERIFY_FAILED."""
    import certifi

    path = Path(certifi.where())
    expect(path.is_file(), f"certifi's CA file {path} is missing")
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle is not None:
        expect(path.resolve().is_relative_to(Path(bundle).resolve()),
               f"certifi's CA file {path} is outside the app bundle {bundle}")
    context = ssl.create_default_context(cafile=str(path))
    roots = context.cert_store_stats()["x509_ca"]
    expect(roots >= MIN_CA_CERTS, f"only {roots} CA certificates load from {path}")
    return f"{path} loads {roots} CA certificates into an SSL context"


def check_data_files() -> str:
    """Our model catalogue and demucs's remote listing (files.txt, NAME.yaml) are present
    and agree on every checkpoint."""
    from importlib import resources

    import yaml

    from engine.catalogue import default_model, get_entry, model_names

    names = model_names()
    expect(default_model() in names, f"the default model is not in the catalogue {names}")
    remote = resources.files("demucs").joinpath("remote")
    listing = remote.joinpath("files.txt").read_text()
    checked = 0
    for name in names:
        entry = get_entry(name)
        yaml_file = remote.joinpath(f"{name}.yaml")
        if not yaml_file.is_file():
            continue  # a model demucs does not publish itself
        bag = yaml.safe_load(yaml_file.read_text())
        expect([c.signature for c in entry.checkpoints] == list(bag["models"]),
               f"{name}: catalogue and demucs's {name}.yaml list different checkpoints")
        missing = [c.file for c in entry.checkpoints if c.file not in listing]
        expect(not missing, f"{name}: {missing} not in demucs's remote/files.txt")
        checked += 1
    expect(checked > 0, "demucs's remote/*.yaml lists none of the catalogue's models")
    return (f"catalogue has {len(names)} models (default {default_model()}); {checked} match "
            f"demucs's remote/*.yaml and files.txt")


def check_libraries() -> str:
    """The native libraries load and compute: scipy.fft, torch, soxr, libsndfile, FFmpeg."""
    import av
    import scipy.fft
    import soundfile
    import soxr
    import torch

    x = np.random.default_rng(0).standard_normal(1024)
    expect(np.allclose(scipy.fft.rfft(x), np.fft.rfft(x)), "scipy.fft.rfft disagrees with numpy")
    window = torch.hann_window(256)
    spec = torch.stft(torch.from_numpy(x), 256, window=window, return_complex=True)
    expect(bool(torch.isfinite(spec.abs()).all()), "torch.stft gave non-finite values")
    codecs = av.codecs_available
    expect({"flac", "mp3", "aac"} <= codecs, "PyAV's FFmpeg lacks flac, mp3 or aac decoders")
    return (f"torch {torch.__version__} ({torch.get_num_threads()} threads), scipy.fft, "
            f"soxr {soxr.__version__}, libsndfile {soundfile.__libsndfile_version__}, "
            f"FFmpeg {av.ffmpeg_version_info} (PyAV {av.__version__})")


# --- the separation ------------------------------------------------------------------------


@contextmanager
def isolated_user_data(home: Path) -> Iterator[None]:
    """Point the model store at `home`: the self-test never touches the user's data dir."""
    saved = {k: os.environ.get(k) for k in ("DEMIXER_HOME", "DEMIXER_MODEL_REPO")}
    os.environ["DEMIXER_HOME"] = str(home)
    os.environ.pop("DEMIXER_MODEL_REPO", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_test_model(ctx: Context) -> str:
    """A tiny random-weight htdemucs_6s in demucs's local-repo format."""
    from engine.testmodel import make_test_model

    repo = ctx.workdir / "repo"
    paths = make_test_model(MODEL, repo, seed=0, tiny=True)
    expect(all(p.is_file() for p in paths) and (repo / f"{MODEL}.yaml").is_file(),
           f"make_test_model wrote no complete repo in {repo}")
    ctx["repo"] = repo
    size = sum(p.stat().st_size for p in paths)
    return f"{MODEL} (tiny, random weights): {', '.join(p.name for p in paths)}, {size:,} bytes"


def check_test_file(ctx: Context) -> str:
    """The 3-second signal, written by the engine's own writer as a float32 WAV."""
    import soundfile as sf

    from engine.writers import OutputFormat, write_audio

    signal = test_signal(RATE, SECONDS * RATE)
    path = write_audio(ctx.workdir / "song.wav", [signal], RATE,
                       fmt=OutputFormat(sample_format="float32", clip_mode="none"))
    back, rate = sf.read(path, dtype="float32", always_2d=True)
    expect(rate == RATE and np.array_equal(back.T, signal),
           "the written WAV does not read back bit for bit")
    ctx["song"] = path
    return f"{path.name}: {SECONDS} s of stereo sines at {RATE} Hz, float32, reads back exactly"


def check_decode(ctx: Context) -> str:
    """engine.decode: 48 kHz -> 44.1 kHz with soxr, exact length, accurate samples."""
    from engine.decode import decode

    track = decode(ctx["song"], 44100, ctx.workdir / "decoded")
    frames = SECONDS * 44100
    expect(track.audio.shape == (2, frames), f"decoded shape {track.audio.shape}, "
           f"expected (2, {frames})")
    ideal = test_signal(44100, frames)
    edge = 4410  # the resampler's filter rings at the ends of a cut signal
    snr = snr_db(track.audio[:, edge:-edge], ideal[:, edge:-edge])
    expect(snr >= 80, f"resampled signal is only {snr:.1f} dB from the ideal sines")
    ctx["mix"] = np.array(track.audio)
    return f"(2, {frames}) at 44100 Hz; {snr:.0f} dB from the ideal sines"


def check_ffmpeg_decode(ctx: Context) -> str:
    """A FLAC-in-Matroska file, which libsndfile cannot open, decodes through FFmpeg (PyAV)
    bit-exactly."""
    from engine.decode import decode

    pcm = np.round(test_signal(RATE, SECONDS * RATE) * 32767).astype(np.int16)
    path = ctx.workdir / "song.mka"
    write_flac_mka(path, pcm, RATE)
    track = decode(path, RATE, ctx.workdir / "decoded-mka")
    expect(track.audio.shape == pcm.shape, f"decoded shape {track.audio.shape} != {pcm.shape}")
    expect(np.array_equal(track.audio, pcm / np.float32(32768)),
           "FFmpeg's decoded FLAC differs from the encoded samples")
    return f"{path.name} (FLAC in Matroska) decodes to the exact {pcm.shape[1]} frames"


def write_flac_mka(path: Path, pcm: np.ndarray, rate: int) -> None:
    """Encode (2, n) int16 `pcm` as FLAC in a Matroska file with PyAV."""
    import av

    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("flac", rate=rate, layout="stereo")
        for start in range(0, pcm.shape[1], 4096):
            block = np.ascontiguousarray(pcm[:, start:start + 4096].T).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def check_separation(ctx: Context) -> str:
    """The app's path: `build_separator` (PyTorch) and a `SeparationJob` into `StemBuffers`
    kept in a folder, writing float32 stems at the model rate plus a sum of all of them."""
    from engine.job import JobEvent, SeparationJob
    from engine.outputs import OutputPlan
    from engine.pipeline import build_separator
    from engine.separator import SeparationOptions
    from engine.writers import OutputFormat

    separator = build_separator(MODEL, repo=ctx["repo"], backend="torch",
                                device="cpu", options=SeparationOptions(shifts=0),
                                download=False)
    plan = OutputPlan(root=ctx.workdir / "out", model_name=MODEL,
                      fmt=OutputFormat(sample_format="float32", clip_mode="none"),
                      mixes=(("all", tuple(separator.sources)),), keep_model_rate=True)
    events: list[JobEvent] = []
    job = SeparationJob(ctx["song"], separator, plan=plan,
                        stems_dir=ctx.workdir / "stems", on_event=events.append)
    result = job.run()
    stems = job.stems
    if not result.ok or stems is None:
        raise CheckFailed(f"the job failed: {result.error or 'cancelled'}")
    ctx["stems"] = stems
    stages = [e.stage for e in events if e.kind == "stage"]
    expect(stages == ["decoding", "separating", "writing"], f"job stages were {stages}")
    expect(events[-1].kind == "done", f"the last job event was {events[-1].kind!r}, not 'done'")
    ready = [e.ready_frames for e in events if e.kind == "ready"]
    expect(bool(ready) and ready[-1] == stems.frames,
           f"'ready' events ended at {ready[-1:]} frames, not the whole track")
    ctx["written"] = result.written
    return (f"SeparationJob done in {result.seconds:.1f} s; stages {' -> '.join(stages)}; "
            f"{len(ready)} 'ready' events up to frame {ready[-1]}; {len(result.written)} files")


def check_stems(ctx: Context) -> str:
    """The stem buffers: sources x 2 x frames, the decoded length, finite, none silent,
    and a reopened copy (the app's library) reads the same."""
    from engine.catalogue import get_entry
    from engine.stembuffers import StemBuffers

    stems: StemBuffers = ctx["stems"]
    mix: np.ndarray = ctx["mix"]
    sources = get_entry(MODEL).sources
    expect(stems.sources == sources, f"stem sources {stems.sources}, expected {sources}")
    shape = (len(stems.sources), stems.channels, stems.frames)
    expect(shape == (len(sources), 2, mix.shape[1]), f"stems are {shape}, expected "
           f"({len(sources)}, 2, {mix.shape[1]})")
    data = np.stack([stems.read(s, 0, stems.frames) for s in stems.sources])
    expect(bool(np.isfinite(data).all()), "the stems hold NaN or infinite samples")
    rms = np.sqrt(np.mean(data.astype(np.float64) ** 2, axis=(1, 2)))
    silent = [name for name, level in zip(sources, rms, strict=True) if level <= 1e-6]
    expect(not silent, f"silent stems: {', '.join(silent)}")
    reopened = StemBuffers.open(stems.directory)
    try:
        again = np.stack([reopened.read(s, 0, reopened.frames) for s in reopened.sources])
    finally:
        reopened.close()
    expect(np.array_equal(again, data), "the reopened stems differ from the job's")
    ctx["stem_data"] = data
    return (f"{shape[0]} sources x {shape[1]} channels x {shape[2]} frames "
            f"({', '.join(sources)}), finite, none silent; reopen reads the same")


def check_reference(ctx: Context) -> str:
    """Each stem equals demucs's own `apply_model` (demucs's loader, same checkpoint, same
    decoded mix, demucs's normalisation)."""
    import torch
    from demucs.apply import apply_model
    from demucs.pretrained import get_model

    bag = get_model(MODEL, repo=ctx["repo"])
    mix = torch.from_numpy(ctx["mix"])
    mono = mix.mean(0)
    mean, std = mono.mean(), mono.std() + 1e-8
    with torch.no_grad():
        out = apply_model(bag, ((mix - mean) / std)[None], shifts=0, split=True,
                          overlap=0.25, progress=False)[0]
    reference = (out * std + mean).numpy()
    data: np.ndarray = ctx["stem_data"]
    expect(reference.shape == data.shape, f"demucs gave {reference.shape}, we {data.shape}")
    snrs = [snr_db(ours, theirs) for ours, theirs in zip(data, reference, strict=True)]
    expect(min(snrs) >= REFERENCE_SNR_DB,
           f"stems differ from demucs's: SNR {[round(s, 1) for s in snrs]} dB "
           f"(need >= {REFERENCE_SNR_DB:.0f})")
    ctx["reference"] = reference
    return f"every stem within {min(snrs):.0f} dB SNR of demucs.apply.apply_model"


def check_sum(ctx: Context) -> str:
    """The sum of the stems equals demucs's sum, and the written 'all' mix equals the sum of
    the buffers. (Random weights: the sum is not the input song; a trained model's is close.)"""
    import soundfile as sf

    data: np.ndarray = ctx["stem_data"]
    reference: np.ndarray = ctx["reference"]
    total = data.astype(np.float64).sum(0)
    against_demucs = snr_db(total, reference.astype(np.float64).sum(0))
    expect(against_demucs >= REFERENCE_SNR_DB,
           f"the sum of the stems is {against_demucs:.1f} dB from demucs's sum")
    written = {p.stem: p for p in ctx["written"]}
    back, _ = sf.read(written["all"], dtype="float32", always_2d=True)
    error = float(np.max(np.abs(back.T - total)))
    tolerance = 1e-6 * max(1.0, float(np.max(np.abs(total))))
    expect(back.T.shape == total.shape and error <= tolerance,
           f"the written mix of all stems is off the stems' sum by {error:.2e}")
    from_input = snr_db(total, ctx["mix"])
    return (f"sum of stems {against_demucs:.0f} dB from demucs's sum; all.wav = sum (max "
            f"error {error:.1e}); {from_input:.1f} dB from the input (random weights)")


def check_written(ctx: Context) -> str:
    """Every stem file: float32 WAV at 44.1 kHz, the exact length, equal to its buffer."""
    import soundfile as sf

    data: np.ndarray = ctx["stem_data"]
    stems = ctx["stems"]
    written = {p.stem: p for p in ctx["written"]}
    expect(set(written) == set(stems.sources) | {"all"},
           f"written files {sorted(written)}")
    for i, name in enumerate(stems.sources):
        info = sf.info(written[name])
        expect((info.samplerate, info.frames, info.subtype) == (44100, data.shape[2], "FLOAT"),
               f"{name}.wav is {info.samplerate} Hz, {info.frames} frames, {info.subtype}")
        back, _ = sf.read(written[name], dtype="float32", always_2d=True)
        expect(np.array_equal(back.T, data[i]), f"{name}.wav differs from its stem buffer")
    folder = written["all"].parent
    return f"{len(written)} float32 WAVs in {folder.name}/, each bit-equal to its buffer"


def check_mp3_export(ctx: Context) -> str:
    """The app's export at the song's own rate: --two-stems vocals as MP3 (soxr back to
    48 kHz, LAME), decoded again to the exact length and close to the stems."""
    import soxr

    from engine.decode import decode
    from engine.outputs import OutputPlan, write_outputs
    from engine.writers import OutputFormat

    stems = ctx["stems"]
    data: np.ndarray = ctx["stem_data"]
    plan = OutputPlan(root=ctx.workdir / "mp3", model_name=MODEL,
                      fmt=OutputFormat(container="mp3"), two_stems="vocals")
    written = write_outputs(plan, ctx["song"], stems, RATE, SECONDS * RATE)
    vocals = stems.sources.index("vocals")
    wanted = {"vocals": data[vocals], "no_vocals": np.delete(data, vocals, 0).sum(0)}
    expect(sorted(p.stem for p in written) == sorted(wanted), f"wrote {written}")
    snrs = []
    for path in written:
        track = decode(path, RATE, ctx.workdir / "decoded-mp3")
        expect(track.audio.shape == (2, SECONDS * RATE),
               f"{path.name} decodes to {track.audio.shape}, not (2, {SECONDS * RATE})")
        ideal = soxr.resample(wanted[path.stem].T, 44100, RATE, quality="HQ").T
        got = track.audio.astype(np.float64)
        gain = float(np.sum(got * ideal) / max(float(np.sum(got * got)), 1e-30))
        snrs.append(snr_db(gain * got, ideal))  # the gain undoes the writer's clip rescale
    expect(min(snrs) >= 20, f"MP3 stems are only {[round(s, 1) for s in snrs]} dB from the "
           "stems")
    return (f"{', '.join(p.name for p in written)} at {RATE} Hz: exact length, "
            f"{min(snrs):.0f} dB from the stems")


def check_coreml_conversion(ctx: Context) -> str:
    """coremltools converts the tiny model's core to an ML Program package and reads its
    metadata back: what the Mac app does on a model's first use (prediction needs macOS)."""
    import torch

    from engine.coreml.convert import convert_core, read_metadata, shapes_from_metadata
    from engine.store import load_model, resolve_model

    resolved = resolve_model(MODEL, ctx["repo"], download=False)
    members = cast("list[torch.nn.Module]", load_model(resolved).models)
    member = members[0]
    result = convert_core(member, ctx.workdir / "coreml", name=MODEL,
                          checkpoint_sha256=resolved.sha256[0])
    expect(result.package.is_dir(), f"no package at {result.package}")
    shapes = shapes_from_metadata(read_metadata(result.package))
    expect(list(shapes.sources) == ctx["stems"].sources,
           f"the package's metadata lists sources {shapes.sources}")
    return (f"{result.package.name}: {result.package_bytes:,} bytes in "
            f"{result.seconds:.1f} s, metadata reads back ({len(shapes.sources)} sources)")


def check_coreml_separation(ctx: Context) -> str:
    """macOS: the app's default backend. Converts (into the self-test's own data folder),
    compiles, predicts on the Neural Engine/GPU/CPU, and agrees with PyTorch."""
    from engine.job import SeparationJob
    from engine.pipeline import build_separator
    from engine.separator import SeparationOptions

    separator = build_separator(MODEL, repo=ctx["repo"], backend="coreml",
                                options=SeparationOptions(shifts=0), download=False)
    job = SeparationJob(ctx["song"], separator, stems_dir=ctx.workdir / "stems-coreml")
    result = job.run()
    stems = job.stems
    if not result.ok or stems is None:
        raise CheckFailed(f"the CoreML job failed: {result.error or 'cancelled'}")
    try:
        data = np.stack([stems.read(s, 0, stems.frames) for s in stems.sources])
    finally:
        stems.close()
    torch_data: np.ndarray = ctx["stem_data"]
    expect(data.shape == torch_data.shape and bool(np.isfinite(data).all()),
           f"CoreML stems are {data.shape}, finite: {bool(np.isfinite(data).all())}")
    snrs = [snr_db(a, b) for a, b in zip(data, torch_data, strict=True)]
    expect(min(snrs) >= COREML_SNR_DB, f"CoreML stems are {[round(s, 1) for s in snrs]} dB "
           f"from PyTorch's (need >= {COREML_SNR_DB:.0f})")
    return (f"{separator.backends[0].name} backend, done in {result.seconds:.1f} s; every stem "
            f"within {min(snrs):.0f} dB of PyTorch's")


def _mlx_location() -> str:
    """Where MLX was loaded from; inside the bundle when frozen (else the check fails)."""
    import mlx.core as mx

    path = Path(str(mx.__file__))
    expect(_inside_bundle(path), f"MLX was loaded from {path}, outside the app bundle")
    if sys.platform == "darwin" and platform.machine() == "arm64":  # its Metal kernels load
        expect(mx.default_device() == mx.gpu, f"MLX runs on {mx.default_device()}, not the GPU")
    return f"MLX {getattr(mx, '__version__', '?')} on {mx.default_device()}"


def _inside_bundle(path: Path) -> bool:
    bundle = getattr(sys, "_MEIPASS", None)
    return bundle is None or path.resolve().is_relative_to(Path(bundle).resolve())


def check_mlx_separation(ctx: Context) -> str:
    """The MLX backend (the Apple GPU on a Mac, MLX's CPU build on Linux): converts the
    weights into the self-test's data folder, separates the song, and equals demucs's
    `apply_model`. Passes with a line saying so where MLX is not installed at all."""
    from engine.mlx_backend import mlx_available

    try:
        import mlx.core  # noqa: F401
    except ImportError:
        return "skipped: MLX is not installed in this build"
    expect(mlx_available(), "MLX imports but cannot compute on this machine")
    where = _mlx_location()
    data = _separate_with("mlx", ctx)
    reference: np.ndarray = ctx["reference"]
    snrs = [snr_db(a, b) for a, b in zip(data, reference, strict=True)]
    expect(min(snrs) >= REFERENCE_SNR_DB, f"MLX stems are {[round(x, 1) for x in snrs]} dB "
           f"from demucs's (need >= {REFERENCE_SNR_DB:.0f})")
    return f"{where}: every stem within {min(snrs):.0f} dB SNR of demucs.apply.apply_model"


def _separate_with(backend: str, ctx: Context) -> np.ndarray:
    """The stems (sources, 2, frames) of the song through `build_separator(backend=...)`."""
    from engine.job import SeparationJob
    from engine.pipeline import build_separator
    from engine.separator import SeparationOptions

    separator = build_separator(MODEL, repo=ctx["repo"], backend=backend,
                                options=SeparationOptions(shifts=0), download=False)
    job = SeparationJob(ctx["song"], separator, stems_dir=ctx.workdir / f"stems-{backend}")
    result = job.run()
    stems = job.stems
    if not result.ok or stems is None:
        raise CheckFailed(f"the {backend} job failed: {result.error or 'cancelled'}")
    try:
        return np.stack([stems.read(s, 0, stems.frames) for s in stems.sources])
    finally:
        stems.close()


# --- running -------------------------------------------------------------------------------


def engine_checks(ctx: Context) -> list[Check]:
    """The checks in order; later ones use what earlier ones left in `ctx`."""
    checks: list[Check] = [
        ("CA bundle", check_ca_bundle),
        ("data files", check_data_files),
        ("libraries", check_libraries),
        ("test model", lambda: check_test_model(ctx)),
        ("test file", lambda: check_test_file(ctx)),
        ("decode", lambda: check_decode(ctx)),
        ("FFmpeg decode", lambda: check_ffmpeg_decode(ctx)),
        ("separation", lambda: check_separation(ctx)),
        ("stems", lambda: check_stems(ctx)),
        ("demucs reference", lambda: check_reference(ctx)),
        ("sum of stems", lambda: check_sum(ctx)),
        ("written stems", lambda: check_written(ctx)),
        ("MP3 export", lambda: check_mp3_export(ctx)),
        ("MLX separation", lambda: check_mlx_separation(ctx)),
    ]
    if sys.platform == "darwin":
        checks.append(("CoreML separation", lambda: check_coreml_separation(ctx)))
    else:
        checks.append(("CoreML conversion", lambda: check_coreml_conversion(ctx)))
    return checks


def run_check(name: str, check: Callable[[], str]) -> Outcome:
    started = time.monotonic()
    try:
        detail, ok = check(), True
    except (CheckFailed, NotRun) as exc:
        detail, ok = str(exc), False
    except Exception as exc:  # noqa: BLE001 - any error is this check's failure, reported
        where = traceback.extract_tb(exc.__traceback__)[-1]
        detail = (f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:"
                  f"{where.lineno})")
        ok = False
    return Outcome(name, ok, detail, time.monotonic() - started)


def run_checks(checks: Sequence[Check], out: Callable[[str], None] = print) -> list[Outcome]:
    """Run every check (a failure does not stop the others) and print a line for each."""
    outcomes = []
    for name, check in checks:
        outcome = run_check(name, check)
        mark = "ok  " if outcome.ok else "FAIL"
        out(f"  {mark} {name}: {outcome.detail} [{outcome.seconds:.1f} s]")
        outcomes.append(outcome)
    return outcomes


def describe_runtime() -> str:
    from engine import __version__

    bundle = getattr(sys, "_MEIPASS", None)
    where = f"frozen app in {bundle}" if bundle else f"from {Path(__file__).parents[2]}"
    return (f"Demixer {__version__} self-test: {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, {where}")


def main(argv: Sequence[str] | None = None, extra_checks: Sequence[Check] = (),
         out: Callable[[str], None] = print) -> int:
    """Run the engine checks, then `extra_checks`; 0 if all pass, else 1. `argv` is
    accepted for the command line's sake and ignored."""
    del argv
    out(describe_runtime())
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="demixer-selftest-"))
    ctx = Context(workdir)
    try:
        with isolated_user_data(workdir / "home"):
            outcomes = run_checks(engine_checks(ctx) + list(extra_checks), out)
    finally:
        stems = ctx.values.get("stems")
        if stems is not None:
            stems.close()
        shutil.rmtree(workdir, ignore_errors=True)
    failed = [o.name for o in outcomes if not o.ok]
    seconds = time.monotonic() - started
    if failed:
        out(f"self-test FAILED: {len(failed)} of {len(outcomes)} checks ({', '.join(failed)}) "
            f"in {seconds:.0f} s")
        return 1
    out(f"self-test passed: {len(outcomes)} checks in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
