"""The calibration's fixed input: a deterministic, music-like stereo excerpt made in numpy.

Not silence and not a pure tone: a 120 bpm bar of drum-like hits (kick sweeps, noise snares,
hi-hats), a bass line with harmonics, a chord pad and a vibrato melody, plus a noise floor,
panned across the stereo field and peaking at -1 dBFS. The transients and the bass give the
network large activations (FP16 overflows show), the noise and the quiet partials its small
ones (precision loss shows). The same call always returns the same samples (a fixed seed).

    excerpt(samplerate, frames) -> float32 (2, frames), peak 0.89
"""

from __future__ import annotations

import numpy as np

SEED = 20240611
BEAT_S = 0.5  # 120 bpm
PEAK = 0.89  # -1 dBFS


def _decay(t: np.ndarray, seconds: float) -> np.ndarray:
    return np.exp(-t / seconds)


def _hits(n: int, rate: int, starts_s: list[float], sound: np.ndarray) -> np.ndarray:
    """`sound` (mono) placed at each start time, cut at the end of the excerpt."""
    out = np.zeros(n, np.float64)
    for start_s in starts_s:
        a = int(start_s * rate)
        if a >= n:
            continue
        m = min(len(sound), n - a)
        out[a:a + m] += sound[:m]
    return out


def _drums(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Kick on beats 1 and 3, snare on 2 and 4, closed hi-hat on every eighth: (3, n)."""
    t = np.arange(int(0.4 * rate)) / rate
    sweep = 45 + 75 * np.exp(-t / 0.03)  # 120 Hz falling to 45 Hz
    kick = np.sin(2 * np.pi * np.cumsum(sweep) / rate) * _decay(t, 0.12)
    snare = (0.6 * rng.standard_normal(len(t)) + np.sin(2 * np.pi * 185 * t)) * _decay(t, 0.08)
    hat_noise = np.diff(rng.standard_normal(len(t) + 1))  # a first difference: bright noise
    hat = 0.5 * hat_noise * _decay(t, 0.015)
    beats = [k * BEAT_S for k in range(int(n / rate / BEAT_S) + 1)]
    return np.stack([_hits(n, rate, beats[0::2], 0.9 * kick),
                     _hits(n, rate, beats[1::2], 0.45 * snare),
                     _hits(n, rate, [b + h for b in beats for h in (0, BEAT_S / 2)], 0.15 * hat)])


def _tone(t: np.ndarray, f0: np.ndarray | float, partials: int, tilt: float) -> np.ndarray:
    """A harmonic tone with partial k at amplitude k**-tilt; `f0` may vary with time."""
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(f0, t.shape)) / (1 / (t[1] - t[0]))
    return sum(np.sin(k * phase) * k ** -tilt for k in range(1, partials + 1))


def _bass(t: np.ndarray) -> np.ndarray:
    """A, F, C, G roots, one per two beats, saw-like, plucked."""
    roots = np.array([55.0, 43.65, 65.41, 49.0])
    index = (t // (2 * BEAT_S)).astype(int) % len(roots)
    return 0.35 * _tone(t, roots[index], 8, 1.0) * _decay(t % (2 * BEAT_S), 0.6)


def _harmony(t: np.ndarray) -> np.ndarray:
    """A sustained A-minor pad and a vibrato melody line."""
    pad = sum(_tone(t, f, 6, 1.5) for f in (220.0, 261.63, 329.63)) * 0.06
    notes = np.array([440.0, 523.25, 493.88, 392.0, 440.0, 659.25])
    f0 = notes[(t // BEAT_S).astype(int) % len(notes)] * (1 + 0.006 * np.sin(2 * np.pi * 5.5 * t))
    melody = 0.12 * _tone(t, f0, 10, 1.2) * (0.6 + 0.4 * _decay(t % BEAT_S, 0.25))
    return pad + melody


def excerpt(samplerate: int, frames: int) -> np.ndarray:
    """The fixed stereo excerpt (see the module docstring): float32 (2, frames)."""
    rng = np.random.default_rng(SEED)
    t = np.arange(frames) / samplerate
    kick, snare, hat = _drums(frames, samplerate, rng)
    bass, harmony = _bass(t), _harmony(t)
    floor = 0.003 * rng.standard_normal((2, frames))
    left = kick + 0.8 * snare + 0.5 * hat + bass + 0.7 * harmony
    right = kick + 1.0 * snare + 1.0 * hat + bass + 1.0 * np.roll(harmony, 30)
    mix = np.stack([left, right]) + floor
    return (mix * (PEAK / np.abs(mix).max())).astype(np.float32)
