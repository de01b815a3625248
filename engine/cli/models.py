"""`demixer models list|download|convert|calibrate|verify|clear` and `demixer doctor`.

`demixer models` alone prints its help and exits 0.

Each command is a `func(args) -> exit code` set on its subparser; `engine.cli` registers them
with `add_models_commands(sub)` and `add_doctor_command(sub)`. Exit codes: 0 done, 1 a
failure (a corrupt file, an error a `DemixerError` names). Results go to stdout (a converted
package's path, tables); progress and notes go to stderr.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.catalogue import default_model, get_entry, model_names
from engine.coreml.convert import COMPRESSIONS, PRECISIONS, ConvertOptions, ConvertProgress
from engine.errors import ChecksumError, DemixerError, ModelUnavailableError

if TYPE_CHECKING:
    from engine.coreml.cache import EntryInfo


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def add_models_commands(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list, download, convert, verify or clear models")
    msub = models.add_subparsers(dest="models_command", required=False,
                                 parser_class=type(models))

    def show_help(args: argparse.Namespace) -> int:  # `demixer models` alone: its help, exit 0
        models.print_help()
        return 0

    models.set_defaults(func=show_help)

    p = msub.add_parser("list", help="the catalogue: what is downloaded, what is converted")
    p.set_defaults(func=run_list)

    p = msub.add_parser("download", help="download and verify models now (for offline use)")
    p.add_argument("names", nargs="+", metavar="NAME", help="catalogue model names")
    p.set_defaults(func=run_download)

    _add_convert_command(msub)
    from engine.cli.calibrate import add_calibrate_command

    add_calibrate_command(msub)
    _add_onnx_commands(msub)
    _add_verify_and_clear(msub)


def _add_convert_command(msub: argparse._SubParsersAction) -> None:
    p = msub.add_parser("convert", help="convert a model to CoreML now (cached)")
    p.add_argument("name", help="model name, e.g. htdemucs_6s")
    p.add_argument("--repo", type=Path, help="a demucs-style folder of checkpoints to use")
    p.add_argument("--precision", default="mixed", choices=PRECISIONS,
                   help="mixed (default: FP16 with FP32 where FP16 overflows), fp16, fp32")
    p.add_argument("--compress", default=None, choices=COMPRESSIONS,
                   help="6bit palettized or 8bit quantized weights (smaller package)")
    p.add_argument("--batch", type=int, default=1, help="chunks per prediction (default 1)")
    p.set_defaults(func=run_convert)


def _add_verify_and_clear(msub: argparse._SubParsersAction) -> None:
    p = msub.add_parser("verify", help="hash downloaded checkpoints and converted packages")
    p.add_argument("--repo", type=Path, help="verify the checkpoints of this folder instead")
    p.set_defaults(func=run_verify)

    p = msub.add_parser("clear", help="remove converted CoreML packages and ONNX exports")
    p.add_argument("--all", action="store_true", help="also remove downloaded checkpoints")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask (a terminal asks)")
    p.set_defaults(func=run_clear)


def _add_onnx_commands(msub: argparse._SubParsersAction) -> None:
    from engine.onnx_export import MAX_OPSET, MIN_OPSET, OPSET, RUNTIMES

    p = msub.add_parser("export-onnx", help="export a model's network core to ONNX")
    p.add_argument("name", help="model name, e.g. htdemucs_6s")
    p.add_argument("--repo", type=Path, help="a demucs-style folder of checkpoints to use")
    p.add_argument("-o", "--out", type=Path, required=True,
                   help="the .onnx file to write (a bag of N models: FILE-1.onnx ... FILE-N)")
    p.add_argument("--opset", type=int, default=OPSET,
                   help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (default {OPSET})")
    p.add_argument("--batch", type=int, default=1, help="chunks per call (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.add_argument("--check", action="store_true",
                   help="then compare it with the torch core (ONNX Runtime)")
    p.set_defaults(func=run_export_onnx)

    p = msub.add_parser("check-onnx", help="compare an exported core with the torch core")
    p.add_argument("file", type=Path, help="a file `demixer models export-onnx` wrote")
    p.add_argument("--repo", type=Path, help="the folder of checkpoints it was exported from")
    p.add_argument("--runtime", action="append", choices=RUNTIMES,
                   help="run it with (repeatable; default onnxruntime)")
    p.set_defaults(func=run_check_onnx)


def add_doctor_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="versions, backends, compute units, audio devices")
    p.set_defaults(func=run_doctor)


# --- models list ---------------------------------------------------------------------------


def _download_column(name: str) -> str:
    from engine.store import ENV_MODEL_REPO, env_repo, local_repo_files, model_status

    repo = env_repo()
    if repo is not None and local_repo_files(name, repo):
        return f"yes (from ${ENV_MODEL_REPO})"

    status = model_status(name)
    present = [c for c in status.checkpoints if c.present]
    size = sum(c.bytes_on_disk or 0 for c in present)
    partial = sum(c.partial_bytes for c in status.checkpoints)
    if status.complete:
        return f"yes ({_mb(size)})"
    text = f"{len(present)}/{len(status.checkpoints)}" if present else "no"
    return text + (f", partial {_mb(partial)}" if partial else "")


def _entry_label(info: EntryInfo) -> str:
    key = info.key
    label = (f"{key.get('precision', '?')}/{key.get('compression', '?')}/b{key.get('batch', '?')} "
             f"{_mb(info.bytes)}")
    return label + (f" (broken: {info.problem})" if info.problem else "")


def run_list(args: argparse.Namespace) -> int:
    from engine.coreml.cache import cache_root, list_entries
    from engine.onnx_cache import cache_root as onnx_root
    from engine.onnx_cache import list_entries as onnx_entries
    from engine.store import checkpoints_dir

    entries = list_entries()
    rows = [("MODEL", "STEMS", "DOWNLOADED", "CONVERTED (precision/compression/batch)")]
    for name in model_names():
        converted = [_entry_label(e) for e in entries if e.key.get("model") == name]
        star = "*" if name == default_model() else ""
        rows.append((name + star, str(len(get_entry(name).sources)), _download_column(name),
                     "; ".join(converted) or "-"))
    others = [e for e in entries if e.key.get("model") not in model_names()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True))
              + "  " + row[3])
    for info in others:
        print(f"(other) {info.entry.name}: {_entry_label(info)}")
    total = sum(e.bytes for e in entries)
    print(f"* default. Checkpoints in {checkpoints_dir()}; CoreML packages in {cache_root()} "
          f"({len(entries)}, {_mb(total)}).")
    exports = onnx_entries()
    print(f"ONNX exports (OpenVINO, ONNX Runtime) in {onnx_root()}: {len(exports)}, "
          f"{_mb(sum(e.bytes for e in exports))}"
          + "".join(f"; {e.key.get('model', e.entry.name)}/o{e.key.get('opset', '?')}"
                    f"/b{e.key.get('batch', '?')}" + (" (broken)" if e.problem else "")
                    for e in exports) + ".")
    return 0


# --- models download ----------------------------------------------------------------------


def run_download(args: argparse.Namespace) -> int:
    from engine.store import download_model

    for name in args.names:
        get_entry(name)  # an unknown name: one sentence before any download
    for name in args.names:
        resolved = download_model(name, progress=download_printer())
        done = "downloaded" if resolved.origin == "download" else "already there"
        folder = resolved.checkpoints[0].parent
        print(f"{name}: {done}, verified, in {folder}")
    return 0


# --- models convert ------------------------------------------------------------------------


def stage_printer() -> Callable[[ConvertProgress], None]:
    """Conversion progress on stderr: one line per stage; in a terminal, the line counts up.
    (Also for `demixer separate`, whose first CoreML run converts.)"""
    tty = sys.stderr.isatty()
    shown: list[str] = []

    def show(event: ConvertProgress) -> None:
        line = f"  [{event.fraction:4.0%}] {event.stage}: {event.message}"
        if tty:
            end = "\n" if event.fraction >= 1.0 else ""
            print(f"\r\033[K{line}", end=end, file=sys.stderr, flush=True)
        elif not shown or shown[-1] != event.stage or event.fraction >= 1.0:
            _err(line)
        shown.append(event.stage)
    return show


def download_printer() -> Callable[[Any], None] | None:
    """Download progress as tqdm bars on stderr, one per file; None when it is not a terminal.
    (Also for `demixer separate`, whose first run of a model downloads it.)"""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def show(p: Any) -> None:
        bar = bars.get(p.file) or bars.setdefault(
            p.file, tqdm(total=p.total, unit="B", unit_scale=True, desc=f"Downloading {p.file}"))
        bar.update(p.done - bar.n)
    return show


def run_convert(args: argparse.Namespace) -> int:
    from engine.coreml.cache import ensure_model_packages
    from engine.store import resolve_model

    options = ConvertOptions(precision=args.precision, compress=args.compress, batch=args.batch)
    resolved = resolve_model(args.name, args.repo, progress=download_printer())
    packages = ensure_model_packages(resolved, options, progress=stage_printer())
    for index, package in enumerate(packages):
        member = f" model {index + 1}/{len(packages)}" if len(packages) > 1 else ""
        done = "cache hit" if package.hit else f"converted in {package.seconds:.1f} s"
        _err(f"{args.name}{member}: {done}; {options.precision} precision, compression "
             f"{options.compress or 'none'}, batch {options.batch}; package "
             f"{_mb(package.package_bytes)}")
        print(package.package)
    return 0


# --- models export-onnx / check-onnx ---------------------------------------------------------


def _member_paths(out: Path, count: int) -> list[Path]:
    """Where each member of a bag goes: FILE itself for one model, FILE-1 ... FILE-N else."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix or '.onnx'}") for i in range(count)]


# The quality gates of DESIGN.md: an exact runtime >= 70 dB from torch fp32, a fast one >= 40.
CHECK_GATES_DB = {"onnxruntime": 70.0, "openvino": 70.0, "openvino-bf16": 40.0}


def _print_checks(label: str, runtime: str, checks: list[Any]) -> bool:
    """Print one line per output; True if every output passes the runtime's gate."""
    gate = CHECK_GATES_DB[runtime]
    for check in checks:
        verdict = "ok" if check.snr_db >= gate else f"BELOW the {gate:.0f} dB gate"
        print(f"{label} ({runtime}): {check.line()} - {verdict}")
    return all(check.snr_db >= gate for check in checks)


def run_export_onnx(args: argparse.Namespace) -> int:
    from engine.onnx_export import check_export_settings, check_exported, export_core
    from engine.store import load_model, resolve_model

    try:
        check_export_settings(args.opset, args.batch)
    except DemixerError as err:
        _err(f"demixer: {err}")
        return 2
    resolved = resolve_model(args.name, args.repo, progress=download_printer())
    paths = _member_paths(args.out, len(resolved.checkpoints))
    taken = [p for p in paths if p.exists()]
    if taken and not args.overwrite:
        _err(f"demixer: {taken[0]} exists already; use --overwrite to replace it.")
        return 2
    bag: Any = load_model(resolved)
    ok = True
    for model, sha, path in zip(bag.models, resolved.sha256, paths, strict=True):
        result = export_core(model, path, name=args.name, checkpoint_sha256=sha,
                             opset=args.opset, batch=args.batch, progress=stage_printer())
        _err(f"{args.name}: exported in {result.seconds:.1f} s; opset {args.opset}, batch "
             f"{args.batch}; {_mb(result.bytes)}")
        print(path)
        if args.check:
            ok &= _print_checks(path.name, "onnxruntime",
                                check_exported(path, model)["onnxruntime"])
    return 0 if ok else 1


def run_check_onnx(args: argparse.Namespace) -> int:
    from engine.onnx_export import META_PREFIX, check_exported, read_metadata
    from engine.store import load_model, resolve_model

    metadata = read_metadata(args.file)
    name, sha = (metadata.get(META_PREFIX + k) for k in ("model", "checkpoint_sha256"))
    if not name or not sha:
        raise DemixerError(f"{args.file} was not exported by Demixer (its metadata names no "
                           f"model); export it with `demixer models export-onnx`.")
    resolved = resolve_model(name, args.repo, download=False)
    if sha not in resolved.sha256:
        raise DemixerError(f"{args.file} was exported from another checkpoint of {name} "
                           f"(SHA-256 {sha[:8]}); give the folder it came from with --repo.")
    bag: Any = load_model(resolved)
    model = bag.models[resolved.sha256.index(sha)]
    results = check_exported(args.file, model, tuple(args.runtime or ["onnxruntime"]))
    ok = [_print_checks(args.file.name, runtime, checks) for runtime, checks in results.items()]
    return 0 if all(ok) else 1


# --- models verify -------------------------------------------------------------------------


def _verify_official(name: str) -> list[tuple[str, str, bool]]:
    """(file, verdict, ok) for the catalogue checkpoints of `name` in the data dir."""
    from engine.download import digest_matches, file_sha256
    from engine.store import model_status

    rows = []
    for ckpt, status in zip(get_entry(name).checkpoints, model_status(name).checkpoints,
                            strict=True):
        if status.bytes_on_disk is None:
            partial = f" (partial download {_mb(status.partial_bytes)})" \
                if status.partial_bytes else ""
            rows.append((ckpt.file, "not downloaded" + partial, True))
            continue
        ok = digest_matches(file_sha256(status.path), ckpt.sha256, ckpt.sha256_prefix)
        verdict = "ok" if ckpt.sha256 else (
            f"ok, but verified only by the 8-hex prefix {ckpt.sha256_prefix} that demucs "
            "publishes (no full SHA-256 is known for it)")
        rows.append((ckpt.file, verdict if ok else "CORRUPT: does not match the catalogue's "
                     "SHA-256 (delete it; it is downloaded again when needed)", ok))
    return rows


def _verify_repo(name: str, repo: Path) -> list[tuple[str, str, bool]]:
    """(file, verdict, ok) for model `name` in a local repo (its name's hash, the catalogue)."""
    from engine.download import digest_matches
    from engine.store import resolve_model

    try:
        resolved = resolve_model(name, repo, download=False)
    except ChecksumError as err:
        return [("", f"CORRUPT: {err}", False)]
    except ModelUnavailableError:
        return [("", "not in this folder", True)]
    rows = []
    catalogue = get_entry(name).checkpoints
    for path, digest, ckpt in zip(resolved.checkpoints, resolved.sha256, catalogue,
                                  strict=False):
        official = digest_matches(digest, ckpt.sha256, ckpt.sha256_prefix)
        if official:
            verdict = "ok (the catalogue's checkpoint" + (
                ")" if ckpt.sha256 else f", by its 8-hex prefix {ckpt.sha256_prefix} only)")
        elif "-" in path.stem:
            verdict = "ok (custom weights: matches the hash in its file name, not the catalogue)"
        else:
            verdict = "UNVERIFIED: a local file whose name carries no hash (custom weights)"
        rows.append((path.name, verdict, True))
    return rows


def run_verify(args: argparse.Namespace) -> int:
    from engine.coreml.cache import list_entries
    from engine.onnx_cache import list_entries as onnx_entries

    ok = True
    for name in model_names():
        rows = _verify_repo(name, args.repo) if args.repo else _verify_official(name)
        for file, verdict, good in rows:
            print(f"{name}: {file + ': ' if file else ''}{verdict}")
            ok &= good
    for info in list_entries(deep=True):
        print(f"coreml: {info.entry.name}: {info.problem or 'ok'}"
              f"{' (rebuilt when next used)' if info.problem else ''}")
        ok &= info.problem is None
    for onnx_info in onnx_entries(deep=True):
        print(f"onnx: {onnx_info.entry.name}: {onnx_info.problem or 'ok'}"
              f"{' (exported again when next used)' if onnx_info.problem else ''}")
        ok &= onnx_info.problem is None
    return 0 if ok else 1


# --- models clear --------------------------------------------------------------------------


def _checkpoint_files() -> list[Path]:
    """Downloaded checkpoints, partial downloads and bag files in the data dir."""
    from engine.store import checkpoints_dir

    folder = checkpoints_dir()
    found = []
    for name in model_names():
        for ckpt in get_entry(name).checkpoints:
            found += [p for p in (folder / ckpt.file, folder / (ckpt.file + ".part"))
                      if p.is_file()]
        if (folder / f"{name}.yaml").is_file():
            found.append(folder / f"{name}.yaml")
    return found


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return True  # scripts and pipes are not asked; what is removed is printed
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def run_clear(args: argparse.Namespace) -> int:
    from engine import onnx_cache
    from engine.coreml.cache import clear_cache, list_entries

    entries = list_entries()
    exports = onnx_cache.list_entries()
    files = _checkpoint_files() if args.all else []
    size = sum(e.bytes for e in entries) + sum(e.bytes for e in exports) + \
        sum(f.stat().st_size for f in files)
    what = f"{len(entries)} converted package(s)" + (
        f", {len(exports)} ONNX export(s) with their compiled models" if exports else "") + (
        f" and {len(files)} checkpoint file(s)" if args.all else "")
    if not args.yes and not _confirm(f"Remove {what} ({_mb(size)})?"):
        _err("Nothing removed.")
        return 0
    removed, busy = clear_cache()
    removed_onnx, busy_onnx = onnx_cache.clear_cache()
    removed += removed_onnx
    for path in files:
        removed.append((path, path.stat().st_size))
        path.unlink()
    for path, nbytes in removed:
        print(f"removed {path} ({_mb(nbytes)})")
    for path in [*busy, *busy_onnx]:
        _err(f"skipped {path}: another Demixer process is converting it")
    print(f"Freed {_mb(sum(n for _, n in removed))}.")
    return 0


# --- doctor --------------------------------------------------------------------------------


def _torch_line() -> str:
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + \
        (["mps"] if torch.backends.mps.is_available() else [])
    return f"torch {torch.__version__} ({torch.get_num_threads()} threads; devices: " \
           f"{', '.join(devices)})"


def _coreml_lines() -> list[str]:
    from engine.backends import coreml_supported
    from engine.coreml.backend import COMPUTE_UNITS

    try:
        from engine.coreml.convert import coremltools_version

        lines = [f"coremltools {coremltools_version()} (conversion works on macOS and Linux)"]
    except DemixerError as err:
        return [f"coremltools: {err}"]
    if not coreml_supported():
        return lines + ["CoreML prediction: not available (CoreML needs macOS 13 or later; "
                        "the torch backend is used)"]
    lines.append(f"CoreML prediction: available; compute units: {', '.join(COMPUTE_UNITS)} "
                 f"(default all = Neural Engine when the model allows)")
    try:  # coremltools 8.1+ on macOS 14+: what this Mac actually has
        from coremltools.models.compute_device import MLComputeDevice

        found = []
        for device in MLComputeDevice.get_all_compute_devices():
            label = type(device).__name__.removeprefix("ML").removesuffix("ComputeDevice")
            cores = getattr(device, "total_core_count", None)
            found.append(f"{label} ({cores} cores)" if cores else label)
        lines.append(f"CoreML compute devices: {', '.join(found)}")
    except Exception as exc:  # older macOS: the list is not available
        lines.append(f"CoreML compute devices: unknown ({type(exc).__name__})")
    return lines


def _runtime_lines() -> list[str]:
    """OpenVINO and ONNX Runtime: installed?, version, precisions / providers here."""
    from importlib import metadata

    from engine.onnxruntime_backend import available_providers, onnxruntime_available
    from engine.openvino_backend import openvino_available, supported_precisions

    lines = []
    for label, dist, here, what in (
            ("OpenVINO", "openvino", openvino_available, supported_precisions),
            ("ONNX Runtime", "onnxruntime", onnxruntime_available, available_providers)):
        if not here():
            lines.append(f"{label}: not installed")
            continue
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:  # a frozen bundle without its dist-info
            version = "(version unknown)"
        kind = "precisions" if dist == "openvino" else "providers"
        lines.append(f"{label} {version} ({kind}: {', '.join(what())})")
    return lines


def _mlx_line() -> str:
    """MLX: its version and device (the GPU on a Mac; the CPU build is a test vehicle)."""
    from engine.mlx_backend import mlx_available

    if not mlx_available():
        return "MLX: not installed or not usable here (--backend mlx unavailable)"
    import mlx.core as mx

    from engine.mlx_cache import cache_root

    cached = len(list(cache_root().glob("*.json")))
    return (f"MLX: {getattr(mx, '__version__', '?')} on {mx.default_device()} "
            f"({cached} converted models in {cache_root()})")


def run_doctor(args: argparse.Namespace) -> int:
    from engine import __version__
    from engine.cli.calibrate import backend_lines, doctor_lines
    from engine.coreml.cache import cache_root, list_entries
    from engine.store import data_dir

    mac = platform.mac_ver()[0]
    system = f"macOS {mac}" if mac else platform.platform()
    entries = list_entries()
    lines = [f"Demixer {__version__}",
             f"Platform: {system} ({platform.machine()})",
             f"Python: {platform.python_version()} ({sys.executable})",
             _torch_line(), *_coreml_lines(), _mlx_line(),
             *_runtime_lines(), *backend_lines(),
             f"Data: {data_dir()} (CoreML packages: {len(entries)} in {cache_root()})",
             *args.host.doctor_lines(), *doctor_lines(), *args.host.doctor_last()]
    print("\n".join(lines))
    return 0
