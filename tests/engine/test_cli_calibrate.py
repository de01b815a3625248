"""`demixer models calibrate`, `separate --quality`, the first run's calibration and the
hand-over warning, and `doctor`'s tables, through `engine.cli.main` on the tiny model."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import engine.calibrate
import engine.pipeline
from engine.backends import Backend, TorchBackend
from engine.calibrate import GATES, cache_dir
from engine.candidates import Candidate, machine_candidates
from engine.cli import main
from engine.excerpt import excerpt
from engine.store import data_dir, load_model, resolve_model
from tests.conftest import seed_onnx_cache
from tests.engine.audio_files import sine_mix, write_wav
from tests.engine.test_calibrate import Fake, Memo

KEYS = {"backend", "precision", "units", "seconds", "snr_db", "passed", "reason"}


@pytest.fixture(scope="module")
def memo(tiny_repo: Path) -> Memo:
    return Memo(load_model(resolve_model("htdemucs_6s", tiny_repo)))


def test_calibrate_json_exact_never_bf16_then_separate_and_doctor_use_the_cache(
        tiny_repo: Path, tiny_onnx_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    seed_onnx_cache(tiny_onnx_root, data_dir())  # OpenVINO / ONNX Runtime: exported before
    args = ["models", "calibrate", "htdemucs_6s", "--repo", str(tiny_repo), "--quality",
            "exact", "--json"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    table = json.loads(out)
    rows = {f"{r['backend']} {r['precision']} {r['units']}": r for r in table["candidates"]}
    assert all(set(r) == KEYS for r in table["candidates"]) and set(table["chosen"]) == KEYS
    assert rows["torch fp32 cpu"]["snr_db"] is None and rows["torch fp32 cpu"]["passed"]
    bf16 = rows["torch bf16 cpu"]
    assert not bf16["passed"] and 25 < bf16["snr_db"] < GATES["exact"]
    assert bf16["reason"] == f"worst stem {bf16['snr_db']:.1f} dB is below the exact gate (70 dB)"
    chosen = table["chosen"]  # the fastest of those within 70 dB: never bf16
    assert chosen["passed"] and chosen in table["candidates"]
    assert chosen["snr_db"] is None or chosen["snr_db"] >= GATES["exact"]
    label = f"{chosen['backend']} {chosen['precision']} {chosen['units']}"
    assert table["choices"]["exact"] == label and label != "torch bf16 cpu"
    assert all(r["seconds"] >= chosen["seconds"] for r in rows.values() if r["passed"])
    assert set(rows) == {c.label for c in machine_candidates()}  # all of this machine's
    for name, row in rows.items():
        assert row["seconds"] is not None or not row["passed"], name
    assert "Calibrating htdemucs_6s on this machine" in err
    assert re.search(r"torch bf16 cpu: [\d.]+ s per chunk, worst stem [\d.]+ dB", err), err
    assert re.search(r"Calibrated in [\d.]+ s; stored in .*calibration", err), err

    song = write_wav(tmp_path / "song.wav", sine_mix(3.0, 44100), 44100)
    assert main(["separate", str(song), "--repo", str(tiny_repo), "-o", str(tmp_path / "o"),
                 "--quality", "exact", "--shifts", "0"]) == 0
    out, err = capsys.readouterr()
    assert "Calibrating" not in err and "calibrated in" not in err  # the cache answered
    assert (tmp_path / "o" / "htdemucs_6s" / "song" / "vocals.wav").is_file()

    assert main(["doctor"]) == 0
    out, _ = capsys.readouterr()
    assert "Calibrations (the fastest backend that passes each quality gate" in out
    assert re.search(r"\s+torch\s+bf16\s+cpu\s+[\d.]+\s+[\d.]+ dB\s+worst stem [\d.]+ dB is "
                     r"below the default gate \(60 dB\)", out), out
    assert re.search(r"Chosen per quality: default \(60 dB\): \S+ \S+ \S+, exact \(70 dB\): "
                     rf"{re.escape(label)}, fast \(40 dB\): ", out), out


def _fakes(memo: Memo, flaky_from_build: int = 0) -> list[Candidate]:
    """A real reference (slowed down), and a memoised fast candidate that (from its
    `flaky_from_build`-th build on, if given) raises on its second call."""
    builds = [0]

    def reference(bag: Any, resolved: Any, progress: Any, cancel: Any) -> list[Backend]:
        real = TorchBackend(bag.models[0])

        def slowed(spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            time.sleep(0.5)  # so that the memoised candidate wins whatever the machine's load
            return real.predict(spec, wave)
        return [Fake(real.shapes, slowed)]

    def fast(bag: Any, resolved: Any, progress: Any, cancel: Any) -> list[Backend]:
        builds[0] += 1
        calls, flaky = [0], flaky_from_build and builds[0] >= flaky_from_build

        def run(spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            calls[0] += 1
            if flaky and calls[0] == 2:
                raise RuntimeError("Neural Engine request timed out")
            return memo(spec, wave)
        return [Fake(memo.real.shapes, run)]
    return [Candidate("torch", "fp32", "cpu", reference), Candidate("speedy", "mixed", "all", fast)]


def _use(monkeypatch: pytest.MonkeyPatch, candidates: list[Candidate]) -> None:
    for module in (engine.calibrate, engine.pipeline):
        monkeypatch.setattr(module, "machine_candidates", lambda include_all=False: candidates)


def test_calibrate_prints_the_table(tiny_repo: Path, memo: Memo,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    _use(monkeypatch, _fakes(memo))
    assert main(["models", "calibrate", "htdemucs_6s", "--repo", str(tiny_repo)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert re.match(r"htdemucs_6s on .+ \(.+ cores\): calibrated .+ in [\d.]+ s; quality "
                    r"default \(worst stem >= 60 dB\)$", lines[0]), lines[0]
    assert lines[1].split() == ["BACKEND", "PRECISION", "UNITS", "S/CHUNK", "WORST", "STEM",
                                "RESULT"]
    assert re.match(r"\s+torch\s+fp32\s+cpu\s+[\d.]+\s+reference\s+passed; [\d.]+x slower "
                    r"than speedy mixed all$", lines[2]), lines[2]
    assert re.match(r"\*\s+speedy\s+mixed\s+all\s+[\d.]+\s+identical\s+chosen: the fastest "
                    r"that passes the default gate \(60 dB\)$", lines[3]), lines[3]
    assert lines[-1].startswith("Chosen per quality: default (60 dB): speedy mixed all")
    assert "(first use" not in err  # asked for, not a first run


def test_first_run_calibrates_with_progress_and_a_failing_backend_hands_over_once(
        tiny_repo: Path, memo: Memo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _use(monkeypatch, _fakes(memo, flaky_from_build=2))  # calibration builds it once: fine
    audio = np.tile(excerpt(44100, 343980), (1, 2))[:, :14 * 44100]  # three chunks
    song = write_wav(tmp_path / "song.wav", audio, 44100)
    out_dir = tmp_path / "out"
    assert main(["separate", str(song), "--repo", str(tiny_repo), "-o", str(out_dir),
                 "--shifts", "0", "--float32"]) == 0
    out, err = capsys.readouterr()
    assert "Calibrating htdemucs_6s on this machine: each backend runs one fixed chunk and is " \
           "checked against PyTorch fp32 (first use on this machine only)." in err
    assert re.search(r"demixer: calibrated in [\d.]+ s; default quality runs on speedy mixed "
                     r"all \(`demixer models calibrate htdemucs_6s` shows the table\)\.", err)
    warning = (f"demixer: warning: {song}: The speedy mixed all backend failed (RuntimeError: "
               f"Neural Engine request timed out); continuing with torch fp32 cpu from the "
               f"same chunk.")
    assert err.count("warning") == 1 and warning in err, err
    assert "6 stems in" in out
    # the stems equal a plain torch fp32 run (the memo is torch fp32, the hand-over too)
    ref_dir = tmp_path / "ref"
    assert main(["separate", str(song), "--repo", str(tiny_repo), "-o", str(ref_dir),
                 "--shifts", "0", "--float32", "--backend", "torch"]) == 0
    import soundfile as sf

    for stem in ("drums", "vocals", "piano"):
        got, _ = sf.read(out_dir / "htdemucs_6s" / "song" / f"{stem}.wav")
        want, _ = sf.read(ref_dir / "htdemucs_6s" / "song" / f"{stem}.wav")
        snr = 10 * np.log10((want ** 2).sum() / max(((got - want) ** 2).sum(), 1e-30))
        assert snr >= GATES["exact"], (stem, snr)


def test_quality_usage(tiny_repo: Path, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["separate", "x.wav", "--quality", "best"],
                 ["models", "calibrate", "htdemucs_6s", "--quality", "ultra"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        assert "invalid choice" in capsys.readouterr().err
    song = write_wav(tmp_path / "song.wav", sine_mix(2.0, 44100), 44100)
    assert main(["separate", str(song), "--repo", str(tiny_repo), "-o", str(tmp_path / "o"),
                 "--shifts", "0", "--backend", "torch", "--quality", "fast"]) == 0
    assert not list(cache_dir().iterdir())  # an explicit backend bypasses the calibration
    assert main(["models", "calibrate", "nope"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("demixer: Unknown model 'nope'")


@pytest.mark.macos
def test_calibration_on_a_mac_runs_every_coreml_and_mlx_candidate(
        tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:  # pragma: no cover
    assert main(["models", "calibrate", "htdemucs_6s", "--repo", str(tiny_repo), "--all",
                 "--json"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)["candidates"]
    labels = {f"{r['backend']} {r['precision']} {r['units']}" for r in rows}
    coreml = {f"coreml {p} {u}" for p in ("mixed", "fp32")
              for u in ("all", "cpu_and_gpu", "cpu_and_ne")}
    assert coreml <= labels, labels
    assert {"torch fp32 mps", "torch bf16 mps"} <= labels
    mlx = [r for r in rows if r["backend"] == "mlx"]
    assert len(mlx) >= 2 and all(r["units"] == "gpu" for r in mlx), mlx
    for r in rows:  # every one ran: measured, or rejected with its reason
        assert (r["seconds"] is not None) or r["reason"], r
    mlx_fp32 = next(r for r in mlx if r["precision"] == "fp32")
    assert mlx_fp32["passed"] and mlx_fp32["snr_db"] >= GATES["exact"], mlx_fp32
    assert main(["models", "calibrate", "htdemucs_6s", "--repo", str(tiny_repo), "--all"]) == 0
    table = capsys.readouterr().out
    with capsys.disabled():
        sys.stdout.write(table)  # the table of this Mac, in the test log
    assert "coreml" in table and "mlx" in table


def test_a_start_calibrated_onto_openvino_loads_no_checkpoint_and_no_torch(
        tiny_repo: Path, tiny_onnx_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`--backend auto` whose cached choice runs from the ONNX cache: the checkpoints are
    never unpickled and torch is never imported (its import and the weights cost about 4 s
    and 300 MB of peak memory in a whole-process run of a 1-minute song)."""
    import subprocess

    from tests.engine.test_openvino_backend import REPO_ROOT, WARM_START

    seed_onnx_cache(tiny_onnx_root, data_dir())
    assert main(["models", "calibrate", "htdemucs_6s", "--repo", str(tiny_repo), "--json"]) == 0
    capsys.readouterr()
    [stored] = cache_dir().glob("*.json")
    data = json.loads(stored.read_text())
    for m in data["measurements"]:
        if (m["backend"], m["precision"]) == ("openvino", "fp32"):
            m["seconds"] = 1e-3  # the fastest, so the default quality's choice
    stored.write_text(json.dumps(data))
    src = write_wav(tmp_path / "song.wav", sine_mix(1.0, 44100), 44100)
    run = subprocess.run([sys.executable, "-c", WARM_START, "separate", str(src), "--repo",
                          str(tiny_repo), "-o", str(tmp_path / "out"), "--shifts", "0"],
                         capture_output=True, text=True, cwd=REPO_ROOT, check=False, timeout=300)
    lines = run.stdout.strip().splitlines()
    assert lines and lines[-1] == "RC 0 False False", run.stdout + run.stderr
    assert "calibrated" not in run.stderr  # the cached calibration was used
    assert len(list((tmp_path / "out" / "htdemucs_6s" / "song").glob("*.wav"))) == 6
