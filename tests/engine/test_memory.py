"""Memory stays flat with the song's length: decode, stems and writing are disk-backed.

Each run is a fresh `demixer separate` process that reports its own peak RSS (VmHWM), so
pytest's own memory does not count. Both lengths use the same flags; `--overlap 0` and
`--two-stems` only cut the test's run time (fewer chunks and files), not what is measured.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tests.engine.audio_files import write_long_wav

PROBE = (
    "import sys, engine.cli\n"
    "rc = engine.cli.main(sys.argv[1:])\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
    "print('PEAK_KB', hwm.split()[1])\n"
    "sys.exit(rc)\n"
)


def _peak_mb(src: Path, repo: Path, out: Path) -> float:
    cmd = [sys.executable, "-c", PROBE, "separate", str(src), "--repo", str(repo), "-o",
           str(out), "--backend", "torch", "--shifts", "0", "--overlap", "0",
           "--two-stems", "vocals"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stderr
    [line] = [ln for ln in run.stdout.splitlines() if ln.startswith("PEAK_KB")]
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux /proc")
def test_peak_rss_of_10_minutes_is_within_150_mb_of_1_minute(tiny_repo: Path,
                                                             tmp_path: Path) -> None:
    """Memory stays flat with the song's length (10 minutes here to keep the suite's time;
    the benchmark measures 1 against 20 minutes: tests/benchmarks/bench_engine.py)."""
    short = write_long_wav(tmp_path / "one.wav", 60, 44100)
    long = write_long_wav(tmp_path / "ten.wav", 10 * 60, 44100)
    peak_short = _peak_mb(short, tiny_repo, tmp_path / "out")
    peak_long = _peak_mb(long, tiny_repo, tmp_path / "out")
    print(f"peak RSS: 1 min {peak_short:.0f} MB, 10 min {peak_long:.0f} MB")
    assert sf.info(tmp_path / "out/htdemucs_6s/ten/vocals.wav").frames == 10 * 60 * 44100
    assert peak_long - peak_short <= 150
