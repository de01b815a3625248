#!/usr/bin/env bash
# The test command (README). Sets up everything on a fresh machine, then runs the suite:
#   system libraries (Debian: PortAudio for sounddevice, the libraries Qt's offscreen
#   platform loads, those its X11 platform needs to open the window, and Xvfb for the
#   display check's test), a virtual environment in .venv with PyTorch pinned to the CPU build
#   2.13.0 (an unpinned torch pulls gigabytes of CUDA packages), the project with its dev
#   extras (on Linux they include MLX's CPU build, mlx[cpu]==0.32.4, for the MLX backend's
#   tests), then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    need=()
    for pkg in libportaudio2 libegl1 libgl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libglib2.0-0 \
               libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
               libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xkb1 xvfb xauth; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'

export QT_QPA_PLATFORM=offscreen
# Two workers (pytest-xdist), a test file each at a time (its module fixtures, e.g. a
# conversion, are made once): alone the suite keeps only 1.1 of the 2 cores busy (subprocesses,
# Qt event loops and file I/O wait). DEMIXER_TEST_WORKERS=0 runs it in one process.
workers=${DEMIXER_TEST_WORKERS:-2}
parallel=()
[ "$workers" = 0 ] || parallel=(-n "$workers" --dist loadfile)
exec .venv/bin/python -m pytest -q -p no:cacheprovider "${parallel[@]}" "$@"
