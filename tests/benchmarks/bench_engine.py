"""Benchmark: demucs.api.Separator vs each Demixer mode, side by side, in one run.

    .venv/bin/python tests/benchmarks/bench_engine.py [--seconds 60] [--long-minutes 20]
        [--modes exact,fast,mlx] [--rss-model real|tiny] [--repeat N]
        [--json bench-results/engine.json]
    .venv/bin/python tests/benchmarks/bench_engine.py --core [--runtimes ...] [--repeat N]
    .venv/bin/python tests/benchmarks/bench_engine.py --whole-process [--seconds 60]
        [--cli-modes exact,openvino,openvino-bf16] [--repeat N]
    .venv/bin/python tests/benchmarks/bench_engine.py --seek-first [--seconds 180]
        [--repeat N] [--shifts 0] [--json FILE]

`--seek-first`: a song of `--seconds` starts separating on the default backend (calibrated
once, before the rounds); the listener seeks to 60 % of it as soon as the lanes appear (the
"separating" stage) and, in a second measurement, half a chunk into the run (a network call
is in flight then and finishes first). The time from the seek to the first "ready" event
whose final intervals hold that frame, in seconds and as a multiple of one segment through
the backend in use (`seek_first_audio_s`, `seek_first_over_segment` at the top level of the
JSON, best of the rounds; `seek_first_midrun_*` for the second; `start_of_song_over_segment`:
the same without a seek, to the song's first audio, as a control under the same load); each
round a fresh process, the three kinds interleaved.

`--core`: each core runtime's seconds per 7.8 s segment (torch fp32/bf16, OpenVINO f32/bf16,
ONNX Runtime fp32), each in its own fresh process, rounds interleaved, best call of the best
round; SNR of each against torch fp32 on the same segment. `--whole-process`: what a user
compares - the `demucs` command (`demucs -n htdemucs_6s --repo DIR --shifts 0 -o OUT song.wav`)
against `demixer separate` with the same model, shifts and overlap, both writing 16-bit stems
(`--float32`: float stems, for an SNR not bounded by 16-bit quantisation),
each a fresh process, rounds interleaved, best round each: wall time, CPU time and peak RSS
(from `os.wait4`), and each mode's SNR against demucs's stems. The export / compile of the
exported runtimes happens once before the rounds (its time is shown as "first run").
`--cli-modes ...,demucs-onnx` adds the peer demucs-onnx (pip install demucs-onnx: its own
export of the test checkpoint is its "first run"; it writes 16-bit stems only).

Same audio, the real htdemucs_6s architecture from `make-test-model` (random weights),
shifts 0, overlap 0.25. For each mode: wall time (decode + separate, no file writing, for
demucs too), seconds of audio per second, throughput ratio to demucs, time to the first
playable region (on a fresh separator, and for a second song on the same one), one segment's
compute time, SNR per stem against demucs (and against exact),
and the peak RSS of a fresh process separating a 1-minute and a `--long-minutes` input.
Each contender runs in its own fresh process, as a user would run it; with `--repeat N` the
contenders take turns N times and each one's fastest round counts.
Prints a table and writes JSON. Not a test: nothing here is timed inside pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.testmodel import make_test_model  # noqa: E402
from tests.engine.audio_files import write_long_wav  # noqa: E402

MODEL = "htdemucs_6s"
MODES = {
    # name: (backend, precision, description)
    "exact": ("torch", "fp32", "PyTorch fp32, demucs's arithmetic"),
    "fast": ("torch", "bf16", "PyTorch bf16 autocast"),
    "coreml-ane": ("coreml", "mixed", "CoreML mixed precision, compute units ALL"),
    "coreml-gpu": ("coreml", "mixed", "CoreML mixed precision, CPU_AND_GPU"),
    "mlx": ("mlx", "fp32", "MLX fp32"),
    "mlx-mixed": ("mlx", "mixed", "MLX, float16 attention"),
    "mlx-fp16": ("mlx", "fp16", "MLX float16"),
    "openvino": ("openvino", "fp32", "OpenVINO f32, the core exported to ONNX"),
    "openvino-bf16": ("openvino", "bf16", "OpenVINO bf16 (INFERENCE_PRECISION_HINT)"),
    "onnxruntime": ("onnxruntime", "fp32", "ONNX Runtime fp32, CPU provider"),
}
# MLX off a Mac is its CPU build: a test vehicle (about a minute per segment here), so its
# rows run only when asked for with --modes, and never for the hour-long RSS runs.
CPU_BUILD_NOTE = "MLX's CPU build (Linux), not the Apple GPU figure"


def _snr(got: np.ndarray, want: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(want**2) / max(np.sum((got - want) ** 2), 1e-30)))


def _music(path: Path, seconds: float) -> Path:
    """A deterministic test song: tones, a bass line and noise bursts, 44.1 kHz stereo."""
    import soundfile as sf

    n = int(seconds * 44100)
    rng = np.random.default_rng(0)
    t = np.arange(n) / 44100
    env = np.exp(-3 * (t % 0.5))
    x = 0.3 * np.sin(2 * np.pi * 110 * t) + 0.2 * env * np.sin(2 * np.pi * 660 * t)
    x = x + 0.05 * env * rng.standard_normal(n)
    sf.write(path, np.stack([x, 0.8 * x]).T.astype(np.float32), 44100, subtype="FLOAT")
    return path


def run_demucs(repo: Path, song: Path) -> tuple[float, dict[str, np.ndarray]]:
    import torch
    from demucs.api import Separator

    sep = Separator(MODEL, repo=repo, shifts=0, overlap=0.25, device="cpu")
    t0 = time.perf_counter()
    _, stems = sep.separate_audio_file(song)
    seconds = time.perf_counter() - t0
    del torch
    return seconds, {k: v.numpy() for k, v in stems.items()}


def run_mode(repo: Path, song: Path, mode: str) -> dict:
    from engine.pipeline import build_separator
    from engine.separator import SeparationOptions

    backend, precision, _ = MODES[mode]
    units = "cpu_and_gpu" if mode == "coreml-gpu" else "all"
    sep = build_separator(MODEL, repo=repo, backend=backend, options=SeparationOptions(
        shifts=0, overlap=0.25), precision=precision, compute_units=units)
    job, seconds, first = _timed_job(song, sep)
    assert job.result.ok, job.result.error
    assert job.stems is not None
    stems = {s: job.stems.read(s, 0, job.stems.frames) for s in sep.sources}
    extra = {}
    if backend == "mlx":
        extra["device"] = str(sep.backends[0].device)  # type: ignore[attr-defined]
    # Another song on the same, already used separator: what every song after the first
    # gets (the app keeps its model loaded), without the first network call's and first post
    # stage's one-time costs; stopped at its first audio.
    again, _, warm = _timed_job(song, sep, stop_at_first=True)
    shutil.rmtree(again.stems_dir, ignore_errors=True)
    return {"seconds": seconds, "first_playable_s": first, "stems": stems,
            "segment_s": _segment_time(sep), "first_playable_warm_s": warm, **extra}


def _timed_job(song: Path, sep: Any, stop_at_first: bool = False) -> tuple[Any, float, float]:
    """A `SeparationJob` of `song` on `sep`, run here: (the job, seconds to its end, seconds
    to its first playable audio); `stop_at_first` cancels it at that point."""
    from engine.job import JobEvent, SeparationJob

    first: list[float] = []
    jobs: list[SeparationJob] = []

    def on_event(e: JobEvent) -> None:
        if e.kind == "ready" and e.ready_frames > 0 and not first:
            first.append(time.perf_counter() - t0)
            if stop_at_first:
                jobs[0].cancel_event.set()

    stems_dir = Path(tempfile.mkdtemp(prefix="bench-stems-"))
    jobs.append(SeparationJob(song, sep, stems_dir=stems_dir, on_event=on_event))
    t0 = time.perf_counter()
    jobs[0].run()
    return jobs[0], time.perf_counter() - t0, first[0]


def _segment_time(sep: object) -> float:
    """One segment through the backend alone (the unit 'first audio' is measured in)."""
    backend = sep.backends[0]  # type: ignore[attr-defined]
    s = backend.shapes
    spec = np.zeros((1, *s.spec_shape), np.float32)
    wave = np.zeros((1, *s.wave_shape), np.float32)
    t0 = time.perf_counter()
    backend.predict(spec, wave)
    return time.perf_counter() - t0


RSS_PROBE = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
mode, repo, song = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
if mode == "demucs":
    from demucs.api import Separator
    Separator({model!r}, repo=repo, shifts=0, overlap=0.25).separate_audio_file(song)
else:
    from engine.job import SeparationJob
    from engine.pipeline import build_separator
    from engine.separator import SeparationOptions
    backend, precision = sys.argv[4:6]
    sep = build_separator({model!r}, repo=repo, backend=backend,
                          options=SeparationOptions(shifts=0), precision=precision)
    assert SeparationJob(song, sep).run().ok
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
print('PEAK_KB', hwm.split()[1])
"""


def peak_rss_mb(mode: str, repo: Path, song: Path) -> float | None:
    """Peak RSS of a fresh process separating `song` (Linux /proc; None elsewhere)."""
    if not Path("/proc/self/status").exists():
        return None
    code = RSS_PROBE.format(root=str(ROOT), model=MODEL)
    args = [sys.executable, "-c", code, mode, str(repo), str(song)]
    if mode != "demucs":
        args += MODES[mode][:2]
    run = subprocess.run(args, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        print(run.stderr[-2000:], file=sys.stderr)
        return None
    line = [x for x in run.stdout.splitlines() if x.startswith("PEAK_KB")][0]
    return int(line.split()[1]) / 1024


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [x for x in Path("/proc/cpuinfo").read_text().splitlines()
                 if x.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def available_modes(wanted: list[str]) -> list[str]:
    from engine.backends import coreml_supported
    from engine.mlx_backend import mlx_available
    from engine.onnxruntime_backend import onnxruntime_available
    from engine.openvino_backend import supported_precisions

    usable = {"coreml": coreml_supported(), "mlx": mlx_available(),
              "onnxruntime": onnxruntime_available()}
    return [m for m in wanted if usable.get(MODES[m][0], True)
            and (MODES[m][0] != "openvino" or MODES[m][1] in supported_precisions())]


def default_modes() -> list[str]:
    """Every mode on a Mac; elsewhere all but MLX's slow CPU build (ask with --modes)."""
    return [m for m in MODES if sys.platform == "darwin" or MODES[m][0] != "mlx"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--core", action="store_true", help="core seconds per segment per runtime")
    ap.add_argument("--runtimes", default=",".join(CORE_RUNTIMES))
    ap.add_argument("--calls", type=int, default=2, help="--core: calls per process (best)")
    ap.add_argument("--whole-process", action="store_true",
                    help="the demucs command against demixer separate, as processes")
    ap.add_argument("--cli-modes", default=",".join(CLI_MODES))
    ap.add_argument("--float32", action="store_true",
                    help="--whole-process: both write float32 stems (16-bit by default)")
    ap.add_argument("--core-one", nargs=3, metavar=("RUNTIME", "REPO", "CALLS"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--long-minutes", type=float, default=20.0)
    ap.add_argument("--modes", default=",".join(default_modes()),
                    help=f"comma separated, of {', '.join(MODES)}")
    ap.add_argument("--rss-model", choices=("real", "tiny"), default="real",
                    help="architecture for the peak-RSS runs (tiny: minutes instead of hours)")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--json", type=Path, default=ROOT / "bench-results" / "engine.json")
    ap.add_argument("--repeat", type=int, default=1,
                    help="timing rounds, interleaved; each contender's best round counts")
    ap.add_argument("--one", nargs=3, metavar=("MODE", "REPO", "SONG"), help=argparse.SUPPRESS)
    ap.add_argument("--seek-first", action="store_true",
                    help="time from a seek to 60 %% to playable audio there")
    ap.add_argument("--shifts", type=int, default=0, help="--seek-first: the shifts")
    ap.add_argument("--backend", default="auto",
                    help="--seek-first: the backend (auto: the calibrated default)")
    ap.add_argument("--seek-one", nargs=5, metavar=("REPO", "SONG", "WHEN", "SHIFTS", "BACKEND"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return run_one(*args.one)
    if args.seek_one:
        return seek_one(*args.seek_one)
    if args.seek_first:
        return run_seek_first(args)
    if args.core_one:
        return core_one(args.core_one[0], Path(args.core_one[1]), int(args.core_one[2]))
    if args.core or args.whole_process:
        return run_process_benchmarks(args)
    work = Path(tempfile.mkdtemp(prefix="demixer-bench-"))
    # the random-weight model's exports and conversions stay out of the user's data dir
    os.environ.setdefault("DEMIXER_HOME", str(work / "home"))
    repo = work / "real"
    make_test_model(MODEL, repo, seed=0)
    song = _music(work / "song.wav", args.seconds)
    modes = available_modes(args.modes.split(","))
    rows = timing_rows(repo, song, modes, args.seconds, args.repeat)
    if not args.no_rss:
        add_rss(rows, work, args)
    report = {"machine": machine(), "seconds": args.seconds, "model": MODEL,
              "shifts": 0, "overlap": 0.25, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print_table(report)
    return 0


def run_one(mode: str, repo: str, song: str) -> int:
    """One contender in this fresh process: timing as JSON on stdout, stems to an .npz file.

    Every contender gets its own process, as a user runs it: nothing (allocator state, thread
    pools, caches) carries over from one to the next.
    """
    if mode == "demucs":
        seconds, stems = run_demucs(Path(repo), Path(song))
        result: dict = {"seconds": seconds}
    else:
        result = run_mode(Path(repo), Path(song), mode)
        stems = result.pop("stems")
    out = Path(song).with_name(f"stems-{mode}.npz")
    np.savez(out, **stems)  # type: ignore[arg-type]  # numpy's stub types **kwds badly
    print("RESULT " + json.dumps({**result, "stems": str(out)}))
    return 0


def _run_in_process(mode: str, repo: Path, song: Path) -> tuple[dict, dict[str, np.ndarray]]:
    args = [sys.executable, __file__, "--one", mode, str(repo), str(song)]
    run = subprocess.run(args, capture_output=True, text=True, check=False)
    lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    if run.returncode != 0 or not lines:
        raise SystemExit(f"{mode} failed:\n{run.stderr[-3000:]}")
    result = json.loads(lines[0][len("RESULT "):])
    with np.load(result.pop("stems")) as z:
        return result, {k: z[k] for k in z.files}


def timing_rows(repo: Path, song: Path, modes: list[str], seconds: float,
                repeat: int = 1) -> list[dict]:
    best: dict[str, dict] = {}
    stems: dict[str, dict[str, np.ndarray]] = {}
    for rnd in range(repeat):  # interleaved, so a slow spell of the machine hits everyone
        for mode in ["demucs", *modes]:
            r, stems[mode] = _run_in_process(mode, repo, song)
            print(f"round {rnd + 1}: {mode} {r['seconds']:.1f} s", flush=True)
            if mode not in best or r["seconds"] < best[mode]["seconds"]:
                best[mode] = r
    d_time = best["demucs"]["seconds"]
    ref = stems["demucs"]
    rows = [{"mode": "demucs", "seconds": d_time, "audio_per_s": seconds / d_time,
             "ratio": 1.0, "rounds": repeat}]
    for mode in modes:
        r = best[mode]
        snrs = {s: _snr(stems[mode][s], ref[s]) for s in ref}
        what = MODES[mode][2]
        if r.get("device", "").startswith("Device(cpu"):
            what = f"{what}: {CPU_BUILD_NOTE}"
        row = {"mode": mode, "what": what, "seconds": r["seconds"],
               "audio_per_s": seconds / r["seconds"], "ratio": d_time / r["seconds"],
               "first_playable_s": r["first_playable_s"], "segment_s": r["segment_s"],
               "first_over_segment": r["first_playable_s"] / r["segment_s"],
               "first_warm_s": r["first_playable_warm_s"],
               "first_warm_over_segment": r["first_playable_warm_s"] / r["segment_s"],
               "snr_vs_demucs_min": min(snrs.values()), "snr_vs_demucs": snrs,
               "rounds": repeat}
        if mode != "exact" and "exact" in stems:
            row["snr_vs_exact_min"] = min(_snr(stems[mode][s], stems["exact"][s])
                                          for s in stems["exact"])
        rows.append(row)
        print(f"{mode}: {r['seconds']:.1f} s, {d_time / r['seconds']:.2f}x demucs", flush=True)
    return rows


def add_rss(rows: list[dict], work: Path, args: argparse.Namespace) -> None:
    repo = work / "real"
    if args.rss_model == "tiny":
        repo = work / "tiny"
        make_test_model(MODEL, repo, seed=0, tiny=True)
    short = write_long_wav(work / "one-minute.wav", 60, 44100)
    long = write_long_wav(work / "long.wav", args.long_minutes * 60, 44100)
    warm = write_long_wav(work / "warm.wav", 5, 44100)
    for row in rows:
        if row["mode"].startswith("coreml") or CPU_BUILD_NOTE in row.get("what", ""):
            continue
        row["rss_model"] = args.rss_model
        if row["mode"] != "demucs":  # its export and compile land in the caches first: the
            peak_rss_mb(row["mode"], repo, warm)  # 1-minute figure is a separation alone
        row["rss_1min_mb"] = peak_rss_mb(row["mode"], repo, short)
        row["rss_long_mb"] = peak_rss_mb(row["mode"], repo, long)
        if row["rss_1min_mb"] and row["rss_long_mb"]:
            row["rss_growth_mb"] = row["rss_long_mb"] - row["rss_1min_mb"]
        print(f"{row['mode']}: RSS {row.get('rss_1min_mb')} -> {row.get('rss_long_mb')} MB",
              flush=True)


def print_table(report: dict) -> None:
    m = report["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads)")
    print(f"{report['seconds']:.0f} s of audio, {report['model']} real architecture, "
          "shifts 0, overlap 0.25\n")
    head = ("mode", "wall s", "audio s/s", "x demucs", "first s", "1st/seg", "next songs",
            "SNR dB", "RSS 1m", "RSS long", "growth")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in report["rows"]:
        snr = r.get("snr_vs_exact_min", r.get("snr_vs_demucs_min"))
        mode = f"{r['mode']} (CPU build)" if CPU_BUILD_NOTE in r.get("what", "") else r["mode"]
        cells = [mode, f"{r['seconds']:.1f}", f"{r['audio_per_s']:.2f}",
                 f"{r['ratio']:.2f}", _f(r.get("first_playable_s")),
                 _f(r.get("first_over_segment"), 2), _f(r.get("first_warm_over_segment"), 2),
                 _f(snr), _f(r.get("rss_1min_mb"), 0),
                 _f(r.get("rss_long_mb"), 0), _f(r.get("rss_growth_mb"), 0)]
        print("| " + " | ".join(cells) + " |")
    print("\nSNR: exact vs demucs; other modes vs exact (min over stems). 1st/seg: first "
          "playable audio / one segment, on a fresh separator (the first song); next songs: "
          "the same on a separator that has run before.")
    if any(CPU_BUILD_NOTE in r.get("what", "") for r in report["rows"]):
        print(f"(CPU build): {CPU_BUILD_NOTE}.")


def _f(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


# --- core runtimes, each in a fresh process ------------------------------------------------

CORE_RUNTIMES = {
    # name: (backend kind, precision)
    "torch-fp32": ("torch", "fp32"),
    "torch-bf16": ("torch", "bf16"),
    "openvino-fp32": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
    "onnxruntime-fp32": ("onnxruntime", "fp32"),
}


def core_one(runtime: str, repo: Path, calls: int) -> int:
    """One runtime in this fresh process: build its backend (from the export cache), time
    `calls` calls on one fixed segment, print the times, save the outputs for the SNR."""
    from engine.pipeline import make_backends
    from engine.store import load_model, resolve_model

    kind, precision = CORE_RUNTIMES[runtime]
    resolved = resolve_model(MODEL, repo)
    t0 = time.perf_counter()
    bag = load_model(resolved) if kind == "torch" else None
    [backend] = make_backends(bag, resolved, kind, precision=precision)
    start_s = time.perf_counter() - t0
    s = backend.shapes
    rng = np.random.default_rng(0)
    spec = rng.standard_normal((1, *s.spec_shape), np.float32)
    wave = rng.standard_normal((1, *s.wave_shape), np.float32)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        out = backend.predict(spec, wave)
        times.append(time.perf_counter() - t)
    path = repo.parent / f"core-{runtime}.npz"
    np.savez(path, spec_out=out[0], time_out=out[1])
    print("RESULT " + json.dumps({"times": times, "start_s": start_s, "out": str(path)}))
    return 0


def _child(args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run a fresh process; its wall time, CPU time and peak RSS (`os.wait4`), stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, unlike getrusage
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:5])}... failed:\n{stderr[-3000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": stdout}


def _snr_min(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return min(_snr(a[k], b[k]) for k in b)


def core_rows(repo: Path, runtimes: list[str], rounds: int, calls: int,
              env: dict[str, str]) -> list[dict]:
    for runtime in runtimes:  # warm-up: exports and compiles land in the caches first
        _child([sys.executable, __file__, "--core-one", runtime, str(repo), "1"], env)
    best: dict[str, dict] = {}
    for rnd in range(rounds):
        for runtime in runtimes:
            run = _child([sys.executable, __file__, "--core-one", runtime, str(repo),
                          str(calls)], env)
            line = [x for x in run["stdout"].splitlines() if x.startswith("RESULT ")][0]
            r = json.loads(line[len("RESULT "):])
            r["segment_s"] = min(r["times"])
            print(f"round {rnd + 1}: {runtime} {r['segment_s']:.2f} s/segment "
                  f"(start {r['start_s']:.1f} s)", flush=True)
            if runtime not in best or r["segment_s"] < best[runtime]["segment_s"]:
                best[runtime] = r
    outs = {k: dict(np.load(v["out"])) for k, v in best.items()}
    ref_name = "torch-fp32" if "torch-fp32" in outs else runtimes[0]
    rows = []
    for runtime in runtimes:
        r = best[runtime]
        rows.append({"runtime": runtime, "segment_s": r["segment_s"], "start_s": r["start_s"],
                     "vs_ref": best[ref_name]["segment_s"] / r["segment_s"],
                     "snr_vs_ref": None if runtime == ref_name else
                     _snr_min(outs[runtime], outs[ref_name]), "ref": ref_name})
    return rows


# --- seek first: from a seek to 60 % to playable audio there -------------------------------

SEEK_AT = 0.6


def seek_one(repo: str, song: str, when: str, shifts: str, backend: str) -> int:
    """One round in this fresh process: separate `song` on the default backend, seek to 60 %
    `when` ("start": as the separating stage begins; "midrun": half a chunk after the first
    region is ready), print the seconds to playable audio there and one segment's time."""
    import threading

    from engine.job import JobEvent, SeparationJob
    from engine.pipeline import build_separator
    from engine.separator import SeparationOptions

    sep = build_separator(MODEL, repo=Path(repo), backend=backend,
                          options=SeparationOptions(shifts=int(shifts), overlap=0.25, seed=0))
    marks: dict[str, float] = {}
    job: SeparationJob
    target: list[int] = []

    def seek() -> None:
        marks["seek"] = time.perf_counter()
        job.focus(target[0])

    def on_event(e: JobEvent) -> None:
        now = time.perf_counter()
        if e.kind == "stage" and e.stage == "separating":
            at = 0.0 if when == "baseline" else SEEK_AT
            target.append(int(at * job.stems.frames))  # type: ignore[union-attr]
            marks["start"] = now
            if when in ("start", "baseline"):  # baseline: no seek, the song's start
                seek()
        elif e.kind == "ready" and "seek" not in marks and "first" not in marks:
            marks["first"] = now
            threading.Timer((now - marks["start"]) / 2, seek).start()
        elif e.kind == "ready" and "seek" in marks and "play" not in marks:
            if any(a <= target[0] < b for a, b in e.final):
                marks["play"] = now
                job.cancel()  # the rest is not measured

    job = SeparationJob(Path(song), sep, on_event=on_event)
    job.run()
    print("RESULT " + json.dumps({"audio_s": marks["play"] - marks["seek"],
                                  "segment_s": _segment_time(sep),
                                  "backend": sep.backends[0].name}))
    return 0


def run_seek_first(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="demixer-bench-"))
    repo = work / "real"
    make_test_model(MODEL, repo, seed=0)
    env = {**os.environ, "DEMIXER_HOME": str(work / "home"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    song = _music(work / "song.wav", args.seconds)
    warm = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
            "from engine.pipeline import build_separator; from pathlib import Path; "
            f"build_separator({MODEL!r}, repo=Path(sys.argv[2]), backend=sys.argv[3])",
            str(ROOT), str(repo), args.backend]
    print(f"calibrating / exporting once: {_child(warm, env)['wall_s']:.0f} s", flush=True)
    rounds: dict[str, list[dict]] = {"start": [], "midrun": [], "baseline": []}
    for rnd in range(args.repeat):  # interleaved, so a slow spell hits both
        for when in rounds:
            run = _child([sys.executable, __file__, "--seek-one", str(repo), str(song), when,
                          str(args.shifts), args.backend], env)
            line = [x for x in run["stdout"].splitlines() if x.startswith("RESULT ")][0]
            r = json.loads(line[len("RESULT "):])
            r["over_segment"] = r["audio_s"] / r["segment_s"]
            rounds[when].append(r)
            print(f"round {rnd + 1}: seek at {when}: {r['audio_s']:.2f} s to audio, segment "
                  f"{r['segment_s']:.2f} s ({r['backend']}): {r['over_segment']:.2f}x",
                  flush=True)
    report = _seek_report(args, rounds)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _seek_report(args: argparse.Namespace, rounds: dict[str, list[dict]]) -> dict:
    """Best round (lowest multiple of a segment) of each, and every round for the record."""
    start = min(rounds["start"], key=lambda r: r["over_segment"])
    mid = min(rounds["midrun"], key=lambda r: r["over_segment"])
    base = min(rounds["baseline"], key=lambda r: r["over_segment"])
    med = sorted(r["over_segment"] for r in rounds["start"])[len(rounds["start"]) // 2]
    print(f"\nseek to {SEEK_AT:.0%} of {args.seconds:.0f} s, {start['backend']}, shifts "
          f"{args.shifts}: {start['audio_s']:.2f} s = {start['over_segment']:.2f}x a segment "
          f"(median {med:.2f}x); mid-run {mid['audio_s']:.2f} s = {mid['over_segment']:.2f}x; "
          f"no seek, the song's start: {base['over_segment']:.2f}x")
    return {"machine": machine(), "model": MODEL, "seconds": args.seconds, "seek_at": SEEK_AT,
            "shifts": args.shifts, "overlap": 0.25, "backend": start["backend"],
            "rounds": args.repeat,
            "seek_first_audio_s": start["audio_s"],
            "seek_first_over_segment": start["over_segment"],
            "seek_first_over_segment_median": med,
            "seek_first_midrun_audio_s": mid["audio_s"],
            "seek_first_midrun_over_segment": mid["over_segment"],
            "start_of_song_over_segment": base["over_segment"], "all_rounds": rounds}


# --- whole processes: the demucs command against demixer separate ------------------------

CLI_MODES = {
    # name: demixer separate flags
    "auto": [],  # what a user gets: the calibrated choice for the default quality
    "auto-fast": ["--quality", "fast"],  # ... and for the fast quality
    "exact": ["--backend", "torch"],
    "fast": ["--backend", "torch", "--precision", "bf16"],
    "openvino": ["--backend", "openvino"],
    "openvino-bf16": ["--backend", "openvino", "--precision", "bf16"],
    "onnxruntime": ["--backend", "onnxruntime"],
}


# The peer demucs-onnx (PyPI): the whole model with its STFT as convolutions, in ONNX Runtime.
# Its `separate` downloads published exports; here it runs its own export of the test model
# (`demucs-onnx export CKPT FILE`, with its parity check), as 16-bit WAV (it writes no other).
PEER = "demucs-onnx"
PEER_RUN = """
import sys
from pathlib import Path
import demucs_onnx.inference as peer
onnx, song, out = sys.argv[1:]
peer.download_single_model = lambda *a, **k: Path(onnx)  # our export, not the Hub's
peer.separate(song, out, model="htdemucs_6s", providers="cpu", progress=False)
"""


def _peer_onnx(repo: Path) -> Path:
    return repo / "demucs-onnx-htdemucs_6s.onnx"


PEER_EXPORT = """
import sys
from pathlib import Path
import demucs.pretrained
from demucs_onnx.export import export_to_onnx
repo_dir, out = Path(sys.argv[1]), sys.argv[2]
get_model = demucs.pretrained.get_model
# its loader takes a pretrained name (from the Hub) or a pickled model, not a repo's package
demucs.pretrained.get_model = lambda name, repo=None: get_model(name, repo=repo_dir)
export_to_onnx("htdemucs_6s", out, verbose=False)
"""


def _peer_export(repo: Path, env: dict[str, str]) -> float:
    """demucs-onnx's own export (with its parity check) of the test checkpoint, once; its
    wall time."""
    args = [sys.executable, "-c", PEER_EXPORT, str(repo), str(_peer_onnx(repo))]
    return float(_child(args, env)["wall_s"])


def _cli_args(mode: str, repo: Path, song: Path, out: Path, float32: bool) -> list[str]:
    depth = ["--float32"] if float32 else []
    if mode == PEER:
        return [sys.executable, "-c", PEER_RUN, str(_peer_onnx(repo)), str(song),
                str(out / MODEL / song.stem)]
    if mode == "demucs":
        return [sys.executable, "-m", "demucs", "-n", MODEL, "--repo", str(repo), "--shifts",
                "0", "--overlap", "0.25", "-o", str(out), *depth, str(song)]
    return [sys.executable, "-m", "engine.cli", "separate", str(song), "-n", MODEL, "--repo",
            str(repo), "--shifts", "0", "--overlap", "0.25", "-o", str(out), "--overwrite",
            *depth, *CLI_MODES[mode]]


def _stems(out: Path, song: Path) -> dict[str, np.ndarray]:
    import soundfile as sf

    folder = out / MODEL / song.stem
    return {p.stem: sf.read(p, dtype="float32")[0] for p in sorted(folder.glob("*.wav"))}


def whole_process_rows(repo: Path, song: Path, modes: list[str], rounds: int,
                       env: dict[str, str], work: Path, float32: bool = False) -> list[dict]:
    first: dict[str, float] = {}
    for mode in modes:  # the first run of an exported runtime exports and compiles
        if mode == PEER:
            first[mode] = _peer_export(repo, env)
            print(f"export: {mode} {first[mode]:.1f} s", flush=True)
            continue
        first[mode] = _child(_cli_args(mode, repo, song, work / "warm", float32),
                             env)["wall_s"]
        print(f"first run: {mode} {first[mode]:.1f} s", flush=True)
    best: dict[str, dict] = {}
    stems: dict[str, dict[str, np.ndarray]] = {}
    for rnd in range(rounds):  # interleaved, so a slow spell of the machine hits everyone
        for mode in ["demucs", *modes]:
            out = work / f"out-{mode}"
            shutil.rmtree(out, ignore_errors=True)
            r = _child(_cli_args(mode, repo, song, out, float32), env)
            stems[mode] = _stems(out, song)
            print(f"round {rnd + 1}: {mode} {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, "
                  f"{r['peak_rss_mb']:.0f} MB peak", flush=True)
            if mode not in best or r["wall_s"] < best[mode]["wall_s"]:
                best[mode] = r
    d = best["demucs"]["wall_s"]
    rows = [{"mode": "demucs", **_row(best["demucs"]), "ratio": 1.0}]
    for mode in modes:
        rows.append({"mode": mode, **_row(best[mode]), "ratio": d / best[mode]["wall_s"],
                     "first_run_s": first[mode],
                     "snr_vs_demucs_min": _snr_min(stems[mode], stems["demucs"])})
    return rows


def _row(r: dict) -> dict:
    return {k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")}


def run_process_benchmarks(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="demixer-bench-"))
    repo = work / "real"
    make_test_model(MODEL, repo, seed=0)
    # a data dir of its own: the exports and compiled models of this run, nobody else's
    env = {**os.environ, "DEMIXER_HOME": str(work / "home"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    report: dict = {"machine": machine(), "model": MODEL, "rounds": args.repeat}
    if args.core:
        report["core"] = core_rows(repo, args.runtimes.split(","), args.repeat, args.calls, env)
        print_core_table(report["core"])
    if args.whole_process:
        song = _music(work / "song.wav", args.seconds)
        report["seconds"] = args.seconds
        report["stems"] = "float32" if args.float32 else "int16"
        report["whole_process"] = whole_process_rows(repo, song, args.cli_modes.split(","),
                                                     args.repeat, env, work, args.float32)
        print_whole_process_table(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def print_core_table(rows: list[dict]) -> None:
    print("\n| runtime (core only) | s / segment | vs torch fp32 | SNR vs torch fp32 | start s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['runtime']} | {r['segment_s']:.2f} | {r['vs_ref']:.2f}x | "
              f"{_f(r['snr_vs_ref'])} | {r['start_s']:.1f} |")


def print_whole_process_table(report: dict) -> None:
    print(f"\n{report['seconds']:.0f} s of audio, {report['model']} real architecture, shifts 0, "
          f"overlap 0.25, {report['stems']} WAV stems; best of {report['rounds']} interleaved "
          f"rounds\n")
    print("| command | wall s | x demucs | CPU s | peak RSS MB | first run s | SNR vs demucs |")
    print("|---|---|---|---|---|---|---|")
    for r in report["whole_process"]:
        print(f"| {r['mode']} | {r['wall_s']:.1f} | {r['ratio']:.2f} | {r['cpu_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {_f(r.get('first_run_s'))} | "
              f"{_f(r.get('snr_vs_demucs_min'))} |")
    if report["stems"] == "int16":
        print("\nSNR of 16-bit stems is bounded by the quantisation: demucs writes x * 32767 "
              "truncated, demixer x * 32768 rounded; --float32 compares the audio itself.")


if __name__ == "__main__":
    raise SystemExit(main())
