"""ONNX export of the network core (`engine.core.HTDemucsCore`), and its parity check.

`export_core(model, out, ...)` writes the core of one HTDemucs (not the STFT / iSTFT, which
stay in numpy) as one ONNX file with fixed shapes, the model's own segment:
    inputs  spec (B, 2C, F, T) float32, wave (B, C, L) float32
    outputs spec_out (B, S, 2C, F, T) float32, time_out (B, S, C, L) float32
B is the batch it was exported for. The file's `metadata_props` say what it is (`demixer.*`:
model, shapes as JSON, checkpoint SHA-256, opset, batch, demixer and torch versions), so a
runtime needs neither torch nor the checkpoint to run it (`read_metadata`, `shapes_of`).

Exporter: the TorchScript one (`torch.onnx.export(dynamo=False)`), measured against
`dynamo=True` with torch 2.13 on the real htdemucs_6s architecture: 16 s against 37 s to
export; the same outputs (85.7 / 103.9 dB from torch in ONNX Runtime for both); per segment
(best of 3 interleaved rounds on a loaded machine) ONNX Runtime ran its graph 1.37x faster
(7.5 against 10.2 s) and OpenVINO the same (7.2 / 7.1 s); and only it writes opset 17 (the
dynamo exporter starts at 18 and its down-conversion fails on this graph, keeping 18). It is
deprecated in torch; if it goes, `dynamo=True` with opset 18 is the way (checked to work).
Either way torch's exporter needs the `onnx` package (running the file does not).
As for CoreML, the MHA fast path is off while tracing (`_native_multi_head_attention` has no
ONNX symbolic either). Files stay under protobuf's 2 GB limit (the real core is 174 MB), so
no external data; a bigger model is refused with a sentence.

`check_exported(path, model)` runs the file with ONNX Runtime or OpenVINO and the torch core
on the same random inputs and reports max abs error, relative error and SNR per output.

torch is imported by the functions that need it, so reading metadata stays torch-free.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from importlib import metadata as dist_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from engine import __version__
from engine.atomicio import write_bytes_atomic
from engine.coreml.convert import ConvertProgress
from engine.errors import CancelFlag, DemixerError, check_cancel
from engine.shapes import CoreShapes

if TYPE_CHECKING:
    from torch import nn

OPSET = 17  # the default; fixed-shape graphs of this core need nothing newer
MIN_OPSET, MAX_OPSET = 14, 20  # scaled_dot_product_attention needs 14
EXPORT_VERSION = 1  # bump when the exported graph changes: it is part of the cache key
INPUT_NAMES = ("spec", "wave")
OUTPUT_NAMES = ("spec_out", "time_out")
META_PREFIX = "demixer."
PROTOBUF_LIMIT = 2**31 - 1  # one ONNX file (without external data) must stay below this
RUNTIMES = ("onnxruntime", "openvino", "openvino-bf16")

ProgressCallback = Callable[[ConvertProgress], None]

# Where each stage starts on the 0..1 progress bar of a first run (export dominates; the
# compile stage is the runtime's, reported by its backend factory).
STAGE_START = {"load": 0.0, "export": 0.05, "save": 0.8, "compile": 0.85}


def emit(progress: ProgressCallback | None, stage: str, message: str,
         fraction: float | None = None) -> None:
    """Report `stage` to `progress` (at the stage's start unless `fraction` is given)."""
    if progress is not None:
        progress(ConvertProgress(stage, STAGE_START.get(stage, 0.0) if fraction is None
                                 else fraction, message))


def torch_version() -> str:
    """torch's version without importing torch (2.7 s): part of the export cache key."""
    try:
        return dist_metadata.version("torch")
    except dist_metadata.PackageNotFoundError:  # a frozen bundle without its dist-info
        return "unknown"


def check_export_settings(opset: int, batch: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise DemixerError(f"The ONNX opset must be between {MIN_OPSET} and {MAX_OPSET}, "
                           f"not {opset}.")
    if not 1 <= batch <= 64:
        raise DemixerError(f"The batch size must be between 1 and 64, not {batch}.")


# --- metadata: written and read as raw protobuf, so neither needs the onnx package ----------


def onnx_metadata(name: str, shapes: CoreShapes, checkpoint_sha256: str, opset: int,
                  batch: int) -> dict[str, str]:
    """What an exported file says about itself (`metadata_props`, strings only)."""
    fields = {
        "model": name, "sources": ",".join(shapes.sources), "samplerate": shapes.samplerate,
        "segment": str(Fraction(shapes.segment_samples, shapes.samplerate)),
        "segment_samples": shapes.segment_samples, "checkpoint_sha256": checkpoint_sha256,
        "opset": opset, "batch": batch, "demixer_version": __version__,
        "torch_version": torch_version(), "export_version": EXPORT_VERSION,
        "shapes": shapes.to_json(),
    }
    return {META_PREFIX + k: str(v) for k, v in fields.items()}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


_METADATA_FIELD = 14  # ModelProto.metadata_props: repeated StringStringEntryProto {1 key, 2 value}


def metadata_bytes(metadata: dict[str, str]) -> bytes:
    """`metadata_props` entries as protobuf bytes: appended to a serialised ModelProto they
    add to its metadata (protobuf merges concatenated messages; repeated fields append)."""
    return b"".join(_field(_METADATA_FIELD, _field(1, k.encode()) + _field(2, v.encode()))
                    for k, v in metadata.items())


def _read_varint(f: BinaryIO) -> int | None:
    """The next varint, or None at the end of the data; ValueError if it is cut or too long."""
    shift = value = 0
    for count in range(10):
        byte = f.read(1)
        if not byte:
            if count:
                raise ValueError("the data ends inside a number")
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
    raise ValueError("a number is longer than protobuf allows")


def _length(f: BinaryIO, end: int) -> int:
    """A length-delimited field's length, checked against the bytes left (`end`)."""
    size = _read_varint(f)
    if size is None or f.tell() + size > end:
        raise ValueError("a field runs past the end of the data")
    return size


def _tag(f: BinaryIO) -> tuple[int, int] | None:
    """(field number, wire type) of the next field, None at the end."""
    tag = _read_varint(f)
    if tag is None:
        return None
    if tag >> 3 == 0 or tag & 7 not in (0, 1, 2, 5):
        raise ValueError(f"field tag {tag} is not protobuf")
    return tag >> 3, tag & 7


def _skip(f: BinaryIO, wire: int, end: int) -> None:
    if wire == 0:
        _read_varint(f)
    elif wire in (1, 5):
        f.seek(8 if wire == 1 else 4, io.SEEK_CUR)
    else:
        f.seek(_length(f, end), io.SEEK_CUR)
    if f.tell() > end:
        raise ValueError("a field runs past the end of the data")


def _entry(data: bytes) -> tuple[str, str]:
    """A StringStringEntryProto's (key, value)."""
    found = {1: "", 2: ""}
    view = io.BytesIO(data)
    while (tag := _tag(view)) is not None:
        if tag[1] == 2 and tag[0] in found:
            found[tag[0]] = view.read(_length(view, len(data))).decode()
        else:
            _skip(view, tag[1], len(data))
    return found[1], found[2]


def read_metadata(path: Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file, read by seeking over its top-level fields (a few
    ms for 174 MB; `onnx.load` takes 1.9 s). A `DemixerError` if it is not protobuf."""
    out: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            end = f.seek(0, io.SEEK_END)
            f.seek(0)
            while (tag := _tag(f)) is not None:
                if tag == (_METADATA_FIELD, 2):
                    key, value = _entry(f.read(_length(f, end)))
                    out[key] = value
                else:
                    _skip(f, tag[1], end)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DemixerError(f"{path} cannot be read as an ONNX file ({exc}).") from exc
    return out


def shapes_of(metadata: dict[str, str], path: Path) -> CoreShapes:
    """The core's shapes from an exported file's metadata; a sentence if they are missing."""
    try:
        return CoreShapes.from_json(metadata[META_PREFIX + "shapes"])
    except (KeyError, ValueError, TypeError) as exc:
        raise DemixerError(f"{path} was not exported by Demixer (its metadata has no core "
                           f"shapes); export it with `demixer models export-onnx`.") from exc


# --- export ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    path: Path
    metadata: dict[str, str]
    seconds: float
    bytes: int


def export_bytes(model: nn.Module, batch: int = 1, opset: int = OPSET) -> tuple[bytes, CoreShapes]:
    """The serialised ONNX ModelProto of the core of `model` (an HTDemucs, not a bag)."""
    import torch

    from engine.core import HTDemucsCore
    from engine.coreml.convert import example_inputs, mha_fastpath_disabled

    core = HTDemucsCore(model).eval()
    spec, wave = example_inputs(core.shapes, batch)
    buf = io.BytesIO()
    with torch.no_grad(), mha_fastpath_disabled(), warnings.catch_warnings():
        # fixed shapes by design: the tracer's "might not generalize" notes are noise, and the
        # exporter's deprecation is known (module docstring)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript",
                                DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        # the TorchScript exporter writes to any binary file object (typed for paths only)
        torch.onnx.export(core, (spec, wave), buf,  # type: ignore[arg-type]
                          input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    return buf.getvalue(), core.shapes


def export_core(model: nn.Module, out: Path, *, name: str, checkpoint_sha256: str,
                opset: int = OPSET, batch: int = 1, progress: ProgressCallback | None = None,
                cancel: CancelFlag | None = None) -> ExportResult:
    """Export the core of `model` (an HTDemucs) to `out`, atomically (see module docstring).

    Emits export and save events; checks `cancel` between them (raises `Cancelled`). `out`
    is replaced only by a complete file; on any failure it is untouched."""
    check_export_settings(opset, batch)
    started = time.monotonic()
    check_cancel(cancel)
    emit(progress, "export", f"Exporting the network of {name} to ONNX (opset {opset})")
    try:
        graph, shapes = export_bytes(model, batch, opset)
    except Exception as exc:  # torch's exporter: a missing onnx package, an unsupported op
        raise DemixerError(f"Exporting the network of {name} to ONNX failed "
                           f"({error_summary(exc)}).") from exc
    metadata = onnx_metadata(name, shapes, checkpoint_sha256, opset, batch)
    data = graph + metadata_bytes(metadata)
    if len(data) > PROTOBUF_LIMIT:
        raise DemixerError(f"The ONNX export of {name} would be {len(data) / 1e9:.1f} GB, "
                           f"over the 2 GB a single ONNX file can hold; it is not supported.")
    check_cancel(cancel)
    emit(progress, "save", f"Saving {out.name} ({len(data) / 1e6:.0f} MB)")
    write_bytes_atomic(out, data)
    return ExportResult(path=out, metadata=metadata, seconds=time.monotonic() - started,
                        bytes=len(data))


# --- the parity check ----------------------------------------------------------------------


@dataclass(frozen=True)
class OutputCheck:
    """How far one output of a runtime is from the torch core's (fp32)."""

    name: str
    max_abs: float
    relative: float  # max_abs / max |reference|
    snr_db: float

    def line(self) -> str:
        return (f"{self.name}: max abs error {self.max_abs:.3g}, relative {self.relative:.3g}, "
                f"SNR {self.snr_db:.1f} dB")


def compare(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> list[OutputCheck]:
    """One `OutputCheck` per output (`OUTPUT_NAMES` order)."""
    checks = []
    for name, g, w in zip(OUTPUT_NAMES, got, want, strict=True):
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        err = float(np.max(np.abs(g64 - w64)))
        noise = float(np.sum((g64 - w64) ** 2))
        snr = math.inf if noise == 0 else 10 * math.log10(float(np.sum(w64**2)) / noise)
        checks.append(OutputCheck(name, err, err / max(float(np.max(np.abs(w64))), 1e-30), snr))
    return checks


def torch_reference(model: nn.Module, batch: int = 1, seed: int = 0
                    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((spec, wave), (spec_out, time_out)): random inputs and the torch core's fp32 outputs,
    with demucs's own attention (the fast path off, as exported)."""
    import torch

    from engine.core import HTDemucsCore
    from engine.coreml.convert import example_inputs, mha_fastpath_disabled

    core = HTDemucsCore(model).eval()
    spec, wave = example_inputs(core.shapes, batch, seed)
    with torch.inference_mode(), mha_fastpath_disabled():
        spec_out, time_out = core(spec, wave)
    return (spec.numpy(), wave.numpy()), (spec_out.numpy(), time_out.numpy())


def runtime_backend(path: Path, runtime: str, threads: int | None = None) -> Any:
    """A backend running the exported file at `path` with `runtime` (`RUNTIMES`), uncached."""
    if runtime == "onnxruntime":
        from engine.onnxruntime_backend import ONNXRuntimeBackend

        return ONNXRuntimeBackend.from_file(path, threads=threads)
    if runtime in ("openvino", "openvino-bf16"):
        from engine.openvino_backend import OpenVINOBackend

        precision = "bf16" if runtime == "openvino-bf16" else "fp32"
        return OpenVINOBackend.from_file(path, precision=precision, threads=threads)
    raise DemixerError(f"Unknown runtime '{runtime}'; use {', '.join(RUNTIMES)}.")


def check_exported(path: Path, model: nn.Module, runtimes: tuple[str, ...] = ("onnxruntime",),
                   *, seed: int = 0, threads: int | None = None
                   ) -> dict[str, list[OutputCheck]]:
    """Each runtime's outputs for the file at `path` against the torch core of `model`, on the
    same random inputs. The torch core runs first, then each runtime in turn: never two
    thread pools computing at once (measured: torch slowed 5-15x beside another pool)."""
    batch = int_field(read_metadata(path), "batch", 1)
    inputs, want = torch_reference(model, batch, seed)
    results = {}
    for runtime in runtimes:
        got = runtime_backend(path, runtime, threads).predict(*inputs)
        results[runtime] = compare(got, want)
    return results


def int_field(metadata: dict[str, str], key: str, default: int) -> int:
    """An integer `demixer.` metadata field (a damaged value counts as missing)."""
    try:
        return int(metadata.get(META_PREFIX + key, default))
    except ValueError:
        return default



def error_summary(exc: BaseException, limit: int = 200) -> str:
    """A runtime's error in one line: its first line that is not a C++ source location
    (OpenVINO's and ONNX Runtime's messages run over many lines)."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    useful = [x for x in lines if not x.startswith("Exception from ")] or lines or [repr(exc)]
    text = useful[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."
