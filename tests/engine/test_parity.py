"""Parity: `demixer separate --float32` equals `demucs.api.Separator` on the same weights.

Both sides see the same 44.1 kHz stereo file (so no resampler is involved) and demucs's output
goes through demucs's own clip prevention, as the demucs CLI would write it. With shifts, the
offsets demucs drew are captured and given to Demixer with --shift-offsets (demucs's
transformer consumes the global `random` state on every forward, so a seed cannot reproduce
them; see engine.chunking.draw_shift_offsets).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from demucs.api import Separator as DemucsSeparator
from demucs.audio import prevent_clip

from engine.cli import main

SEGMENT = 343980  # HTDemucs's 7.8 s training length at 44.1 kHz
LENGTHS = {"short": 5 * 44100, "one": SEGMENT, "several": 12 * 44100 + 1234}


def _music_like(n: int, seed: int) -> np.ndarray:
    """A stereo test signal: decaying tones, a bass line and noise bursts, not pure noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 44100
    env = np.exp(-3 * (t % 0.5))
    x = 0.3 * np.sin(2 * np.pi * 110 * t) + 0.2 * env * np.sin(2 * np.pi * 660 * t)
    x = x + 0.05 * env * rng.standard_normal(n)
    return np.stack([x, 0.8 * x + 0.02 * rng.standard_normal(n)]).astype(np.float32)


def _snr(got: np.ndarray, want: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(want**2) / max(np.sum((got - want) ** 2), 1e-30)))


def _demucs(repo: Path, name: str, wav: np.ndarray, shifts: int) -> tuple[dict, list[int]]:
    """demucs's stems for `wav`, and the shift offsets it drew."""
    import demucs.apply

    drawn: list[int] = []
    real_randint = random.randint

    def spy(a: int, b: int) -> int:
        drawn.append(real_randint(a, b))
        return drawn[-1]

    sep = DemucsSeparator(name, repo=repo, shifts=shifts, overlap=0.25, device="cpu")
    demucs.apply.random.randint = spy  # type: ignore[attr-defined]
    try:
        _, stems = sep.separate_tensor(torch.from_numpy(wav), 44100)
    finally:
        demucs.apply.random.randint = real_randint  # type: ignore[attr-defined]
    return {k: prevent_clip(v, "rescale").numpy() for k, v in stems.items()}, drawn


def _check(repo: Path, name: str, tmp_path: Path, length: int, shifts: int,
           backend: str = "torch") -> list[float]:
    """Every stem of `demixer separate --backend BACKEND --float32` >= 70 dB from demucs's."""
    wav = _music_like(length, seed=length)
    src = tmp_path / "song.wav"
    sf.write(src, wav.T, 44100, subtype="FLOAT")
    want, offsets = _demucs(repo, name, wav, shifts)
    args = ["separate", str(src), "-n", name, "--repo", str(repo), "-o", str(tmp_path / "out"),
            "--float32", "--overlap", "0.25", "--shifts", str(shifts), "--backend", backend]
    if shifts:
        args += ["--shift-offsets", ",".join(map(str, offsets))]
    assert main(args) == 0
    snrs = []
    for stem, ref in want.items():
        got, rate = sf.read(tmp_path / "out" / name / "song" / f"{stem}.wav", dtype="float32")
        assert rate == 44100 and got.shape == (length, 2)
        snrs.append(_snr(got.T, ref))
    assert min(snrs) >= 70, snrs
    return snrs


@pytest.mark.parametrize("length", list(LENGTHS.values()), ids=list(LENGTHS))
def test_tiny_parity_no_shift(tiny_repo: Path, tmp_path: Path, length: int) -> None:
    _check(tiny_repo, "htdemucs_6s", tmp_path, length, shifts=0)


@pytest.mark.parametrize("length", list(LENGTHS.values()), ids=list(LENGTHS))
def test_tiny_parity_two_shifts(tiny_repo: Path, tmp_path: Path, length: int) -> None:
    _check(tiny_repo, "htdemucs_6s", tmp_path, length, shifts=2)


def test_tiny_bag_parity(tiny_repo: Path, tmp_path: Path) -> None:
    """htdemucs_ft: four models, each source from its own model, as demucs weighs them."""
    _check(tiny_repo, "htdemucs_ft", tmp_path, LENGTHS["short"], shifts=0)


@pytest.mark.slow
def test_real_architecture_parity(real_repo: Path, tmp_path: Path) -> None:
    """The real architecture's kernels on one short input; chunking, overlap-add and the
    remainder are the same code at any size and are checked at every length with the tiny
    model above (the suite's time is kept for the backends' real-architecture runs)."""
    _check(real_repo, "htdemucs_6s", tmp_path, LENGTHS["short"], shifts=0)
