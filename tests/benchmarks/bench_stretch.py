"""Time-stretch candidates compared on this machine: CPU cost, pitch accuracy, transient smear.

    python tests/benchmarks/bench_stretch.py [--rounds 5] [--json FILE]

Every candidate runs in a fresh process per round, candidates alternating (the machine is
shared and noisy), and the median of the rounds is reported. Signals are stereo float32 at
44.1 kHz:
  - cost: 10 s of noise at speed 0.8 and +2 semitones, fed in blocks of 2048 frames as the
    player's feeder would; CPU seconds (thread time) per second of audio, in % of one core;
  - pitch: a 440 Hz tone at +2 semitones (expected 493.88 Hz), measured by an FFT peak with
    parabolic interpolation over the steady middle of the output;
  - length: output frames / input frames at speed 0.8 (expected 1.25);
  - smear: drum-like hits (white-noise bursts with a 40 ms decay, every 0.5 s) at speed 0.8;
    the median 10 %→90 % rise time of each hit's 1 ms RMS envelope, in ms (the input's is
    about 0 ms; a phase vocoder without transient handling smears it over its window).
Candidates that only stretch time (audiotsm, pytsmod) shift pitch as stretch + resample,
offline, which a real-time player could not do block by block without more work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

SR = 44100
SPEED = 0.8
SEMITONES = 2.0
BLOCK = 2048

Process = Callable[[np.ndarray, float, float], np.ndarray]  # (2, n), speed, semitones -> (2, m)


def _signalsmith(cheaper: bool) -> Process:
    def run(x: np.ndarray, speed: float, semitones: float) -> np.ndarray:
        from python_stretch.Signalsmith import Stretch
        s = Stretch()
        s.preset(2, float(SR), cheaper)
        s.setTimeFactor(speed)
        s.setTransposeSemitones(semitones)
        outs = [s.process(np.ascontiguousarray(x[:, i:i + BLOCK]))
                for i in range(0, x.shape[1], BLOCK)]
        return np.concatenate(outs, axis=1)
    return run


def _rubberband(finer: bool, short: bool = False) -> Process:
    def run(x: np.ndarray, speed: float, semitones: float) -> np.ndarray:
        import pylibrb
        o = pylibrb.Option
        opts = o.PROCESS_REALTIME | (o.ENGINE_FINER if finer else o.ENGINE_FASTER)
        if short:
            opts |= o.WINDOW_SHORT
        rb = pylibrb.RubberBandStretcher(SR, 2, opts, 1.0 / speed, 2 ** (semitones / 12))
        rb.process(np.zeros((2, rb.get_preferred_start_pad()), np.float32))
        skip = rb.get_start_delay()  # as app.stretch does: the output starts at the input's
        outs = []
        for i in range(0, x.shape[1], BLOCK):
            rb.process(np.ascontiguousarray(x[:, i:i + BLOCK]), i + BLOCK >= x.shape[1])
            outs.append(rb.retrieve_available())
        return np.concatenate(outs, axis=1)[:, skip:]
    return run


def _resampled(stretch: Callable[[np.ndarray, float], np.ndarray]) -> Process:
    """Pitch by stretching time by the pitch ratio, then resampling back to the length."""
    def run(x: np.ndarray, speed: float, semitones: float) -> np.ndarray:
        from fractions import Fraction

        from scipy.signal import resample_poly
        ratio = 2 ** (semitones / 12)
        y = stretch(x, speed / ratio)
        if semitones == 0:
            return y
        f = Fraction(ratio).limit_denominator(200)
        return resample_poly(y, f.denominator, f.numerator, axis=1).astype(np.float32)
    return run


def _audiotsm(x: np.ndarray, speed: float) -> np.ndarray:
    from audiotsm import wsola
    from audiotsm.io.array import ArrayReader, ArrayWriter
    w = ArrayWriter(2)
    wsola(2, speed=speed).run(ArrayReader(x.astype(np.float64)), w)
    return w.data.astype(np.float32)


def _pytsmod(x: np.ndarray, speed: float) -> np.ndarray:
    import pytsmod
    return np.asarray(pytsmod.wsola(x.astype(np.float64), 1.0 / speed), np.float32)


CANDIDATES: dict[str, Process] = {
    "signalsmith (python-stretch)": _signalsmith(False),
    "signalsmith cheaper": _signalsmith(True),
    "rubberband R3 finer (pylibrb)": _rubberband(True),
    "rubberband R3 short window": _rubberband(True, short=True),
    "rubberband R2 faster (pylibrb)": _rubberband(False),
    "audiotsm wsola": _resampled(_audiotsm),
    "pytsmod wsola (offline)": _resampled(_pytsmod),
}


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return np.repeat((0.5 * np.sin(2 * np.pi * hz * t))[None], 2, axis=0).astype(np.float32)


def hits(seconds: float, every: float = 0.5) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(1)
    x = np.zeros((2, int(seconds * SR)), np.float32)
    n = int(0.2 * SR)
    burst = rng.standard_normal((2, n)) * np.exp(-np.arange(n) / (0.04 * SR))
    step = int(every * SR)
    for start in range(step // 2, x.shape[1] - n, step):
        x[:, start:start + n] += burst.astype(np.float32) * 0.5
    return x, step


def peak_hz(y: np.ndarray) -> float:
    mid = y[0, y.shape[1] // 4: 3 * y.shape[1] // 4]
    spec = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1:k + 2] + 1e-12)
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / len(mid))


def rise_ms(y: np.ndarray, step: int) -> float:
    """Median 10→90 % rise time of each hit's 1 ms RMS envelope (step: hit spacing, output)."""
    win = SR // 1000
    m = y.shape[1] // win
    env = np.sqrt((y[0, :m * win].reshape(m, win) ** 2).mean(axis=1))
    per, rises = step // win, []
    for i in range(1, m // per - 1):
        seg = env[i * per:(i + 1) * per]
        k = int(np.argmax(seg))
        lo = np.nonzero(seg[:k + 1] < 0.1 * seg[k])[0]
        hi = np.nonzero(seg[:k + 1] >= 0.9 * seg[k])[0]
        if len(lo) and len(hi):
            rises.append(float(hi[0] - lo[-1]))
    return statistics.median(rises) if rises else float("nan")


def measure(name: str) -> dict[str, float]:
    run = CANDIDATES[name]
    noise = (np.random.default_rng(0).standard_normal((2, 10 * SR)) * 0.1).astype(np.float32)
    run(noise[:, :SR], SPEED, SEMITONES)  # warm up (imports, plans)
    t0 = time.thread_time()
    run(noise, SPEED, SEMITONES)
    cost = (time.thread_time() - t0) / 10.0
    x = tone(5.0)
    hz = peak_hz(run(x, 1.0, SEMITONES))
    length = run(x, SPEED, 0.0).shape[1] / x.shape[1]
    h, step = hits(8.0)
    return {"cpu_pct_of_core": 100 * cost, "pitch_hz": hz, "length_ratio": length,
            "rise_ms": rise_ms(run(h, SPEED, 0.0), int(step / SPEED)),
            "input_rise_ms": rise_ms(h, step)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="write the medians here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in CANDIDATES}
    for _ in range(args.rounds):
        for name in CANDIDATES:  # alternate, each in a fresh process
            out = subprocess.run([sys.executable, __file__, "--one", name], check=True,
                                 capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    table = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
    print(f"{'candidate':32} {'CPU % core':>10} {'Hz (493.88)':>12} {'length':>7} {'rise ms':>8}")
    for n, r in table.items():
        print(f"{n:32} {r['cpu_pct_of_core']:10.1f} {r['pitch_hz']:12.2f} "
              f"{r['length_ratio']:7.3f} {r['rise_ms']:8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
