"""`demixer`: the command line. `demixer FILE...` opens the app; subcommands run headless.

This package is the headless part. The launcher (`app.launch.main`: the console script, `python
-m app` and the frozen app's entry) sends everything `is_headless` accepts here and opens the
window for the rest, so `engine` never reaches for `app`.

`demixer separate` takes demucs's flag names wherever the meaning is the same, so a demucs
user's command works. Exit codes: 0 all files done, 1 any file failed (the rest still ran),
2 usage errors (argparse's own, and settings that cannot work, e.g. CoreML off macOS), each
one line; 130 after Ctrl-C, 143 after SIGTERM (the work so far is kept: see engine.cli.separate).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from engine import __version__
from engine.cli.models import add_doctor_command, add_models_commands
from engine.errors import DemixerError
from engine.names import printable
from engine.options import BACKENDS, CLIP_MODES, COMPUTE_UNITS, MODELS, PRECISIONS, QUALITIES

SUBCOMMANDS = ("separate", "make-test-model", "models", "doctor")


def _no_lines() -> list[str]:
    return []


@dataclass(frozen=True)
class Host:
    """What the layer above adds to the headless commands, which `engine` may not look at
    itself (it never imports Qt, sounddevice or `app`): `demixer doctor`'s lines after the
    data folder's (audio devices) and its last lines (the window), and `--self-test`'s extra
    checks (name, check returning its one line). The launcher passes the app's
    (`app.doctor.HOST`)."""

    doctor_lines: Callable[[], list[str]] = _no_lines
    doctor_last: Callable[[], list[str]] = _no_lines
    self_test_checks: Sequence[tuple[str, Callable[[], str]]] = ()


NO_HOST = Host()


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (exit 2), not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {printable(message)} (see {self.prog} --help)\n")


def _add_separate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("separate", help="separate audio files into stems (like `demucs`)")
    p.add_argument("tracks", nargs="+", type=Path, help="audio files (or folders of them)")
    p.add_argument("-n", "--name", default=None, help="model (default htdemucs_6s)")
    p.add_argument("--repo", type=Path, help="a demucs-style folder of checkpoints to use")
    p.add_argument("-o", "--out", type=Path, default=Path("separated"),
                   help="output folder (default: separated)")
    p.add_argument("--filename", default="{track}/{stem}.{ext}",
                   help="output name template: {track} {trackext} {stem} {ext}")
    p.add_argument("-d", "--device", default="cpu", help="torch device: cpu, cuda, mps")
    p.add_argument("--backend", default="auto",
                   choices=BACKENDS,
                   help="auto (default): the fastest backend that passed the --quality gate "
                        "on this machine (calibrated on first use, see `demixer models "
                        "calibrate`), or a runtime: coreml (macOS 13+), mlx (Apple GPU; MLX's "
                        "CPU build elsewhere); openvino and onnxruntime run the core exported "
                        "to ONNX (exported on first use)")
    p.add_argument("--quality", default="default", choices=QUALITIES,
                   help="what --backend auto must reach against PyTorch fp32 (worst stem): "
                        "exact 70 dB, default 60 dB, fast 40 dB")
    p.add_argument("--compute-units", default=None, choices=COMPUTE_UNITS,
                   help="CoreML compute units (all = Neural Engine when possible); "
                        "bypasses the calibration")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="torch and openvino: fp32 (exact, default) or bf16 (fast); "
                        "onnxruntime: fp32; CoreML: mixed (default), fp16 or fp32; "
                        "MLX: fp32 (default), mixed (fp16 attention) or fp16; "
                        "bypasses the calibration")
    p.add_argument("--shifts", type=int, default=1, help="random shift passes (default 1)")
    p.add_argument("--seed", type=int, default=None, help="seed for the shift offsets")
    p.add_argument("--shift-offsets", default=None,
                   help="explicit shift offsets in samples, comma separated (reproduces a run)")
    p.add_argument("--overlap", type=float, default=0.25,
                   help="fraction of each chunk shared with the next, 0 to 0.99 (default 0.25)")
    p.add_argument("--segment", type=float, default=None, help="segment length in seconds")
    p.add_argument("-j", "--jobs", type=int, default=0,
                   help="CPU threads of the network (0 = all cores, at most this machine's cores)")
    _add_output_flags(p)


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--two-stems", metavar="STEM", help="write STEM and no_STEM only")
    p.add_argument("--mix", action="append", default=[], metavar="NAME=STEM+STEM",
                   help="also write a sum of stems, e.g. instrumental=drums+bass+other")
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--int24", action="store_true", help="24-bit integer WAV/FLAC")
    depth.add_argument("--float32", action="store_true", help="32-bit float WAV")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--flac", action="store_true", help="write FLAC instead of WAV")
    kind.add_argument("--mp3", action="store_true", help="write MP3 (LAME, gapless)")
    p.add_argument("--mp3-bitrate", type=int, default=320,
                   help="MP3 bit rate in kbit/s (default 320)")
    p.add_argument("--clip-mode", default="rescale", choices=CLIP_MODES,
                   help="rescale (default: lower the whole stem if it would clip), "
                        "clamp (cut peaks), none (float32 keeps them)")
    p.add_argument("--keep-model-rate", action="store_true",
                   help="write stems at the model's 44.1 kHz instead of the input's rate")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing stem files (the old set stays whole if this fails)")


def _add_make_test_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-test-model", help="write a random-weight model (tests, benchmarks)")
    p.add_argument("--name", default=MODELS[0], help="catalogue model to imitate")
    p.add_argument("--out", type=Path, required=True, help="folder to write it to")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--tiny", action="store_true", help="a small architecture instead of the real")
    p.set_defaults(func=_run_make_test_model)


def _run_make_test_model(args: argparse.Namespace) -> int:
    from engine.testmodel import make_test_model

    for path in make_test_model(args.name, args.out, seed=args.seed, tiny=args.tiny):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="demixer", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"demixer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _add_separate(sub)
    _add_make_test_model(sub)
    add_models_commands(sub)
    add_doctor_command(sub)
    return parser


def main(argv: Sequence[str] | None = None, host: Host = NO_HOST) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--self-test"]:  # the engine's checks, then the host's (window, Qt...)
        from engine.cli.selftest import main as self_test

        return self_test(argv[1:], extra_checks=host.self_test_checks)
    if argv[:1] == ["--version"]:
        print(f"demixer {__version__}")
        return 0
    if argv and argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        typo = _mistyped_command(argv[0])
        if typo is not None:
            print(f"demixer: unknown command '{printable(argv[0])}'; did you mean '{typo}'?",
                  file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    args.host = host
    try:
        if args.command == "separate":
            from engine.cli.separate import run_separate

            return run_separate(args)
        return int(args.func(args))
    except DemixerError as err:
        print(f"demixer: {printable(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demixer: interrupted.", file=sys.stderr)
        return 130
    except Exception as err:  # a bug or a library's surprise: one line, the rest in the log
        from engine.logfile import unexpected_message

        print(printable(unexpected_message(f"demixer {args.command}", err)), file=sys.stderr)
        return 1


def is_headless(argv: Sequence[str]) -> bool:
    """Whether `argv` is for this command line (a subcommand, a flag, or a mistyped
    subcommand, which `main` names), not files for the window."""
    if not argv:
        return False
    first = argv[0]
    return first in SUBCOMMANDS or first.startswith("-") or _mistyped_command(first) is not None


def _mistyped_command(word: str) -> str | None:
    """The subcommand `word` was probably meant to be, if it is not a file or folder."""
    if os.path.exists(word) or os.sep in word or Path(word).suffix:
        return None
    close = difflib.get_close_matches(word, SUBCOMMANDS, n=1, cutoff=0.6)
    return close[0] if close else None
