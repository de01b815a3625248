"""Waveform lanes: a 10-minute song redraws well within a 60 fps frame at any zoom."""

from __future__ import annotations

import time

import numpy as np
from PySide6.QtGui import QColor

from app.peaks import Peaks
from app.timeline import Timeline
from app.waveform import WaveformWidget, decibel_scale, rasterise
from tests.app.gui import painted_pixels

FRAMES = 600 * 44100  # ten minutes


def ten_minute_peaks() -> Peaks:
    """Peaks of a 10-minute lane (random envelope; made directly, not from 1 GB of audio)."""
    rng = np.random.default_rng(0)
    peaks = Peaks(FRAMES)
    for level in peaks.levels:
        level[0] = -rng.uniform(0, 1, level.shape[1])
        level[1] = rng.uniform(0, 1, level.shape[1])
    peaks.valid_frames = FRAMES
    return peaks


def test_seven_lanes_of_a_ten_minute_song_redraw_within_a_frame(qtbot) -> None:  # type: ignore[no-untyped-def]
    peaks = ten_minute_peaks()
    timeline = Timeline()
    timeline.reset(FRAMES, 44100)
    lanes = []
    for _ in range(7):
        wave = WaveformWidget(timeline, peaks, "#e8833a", grows=False)
        qtbot.addWidget(wave)
        wave.resize(1150, 90)
        wave.show()
        lanes.append(wave)
    timeline.set_width(1150)
    for zoom in (1.0, 16.0, 256.0, 1e6):  # whole song ... the deepest zoom
        timeline.fit()
        timeline.zoom(zoom, 500)
        times = []
        for _ in range(12):
            timeline.scroll_by_px(5)  # a scroll re-rasterises every lane
            timeline.set_playhead(timeline.playhead + 2000)
            start = time.perf_counter()
            for wave in lanes:
                wave.repaint()
            times.append(time.perf_counter() - start)
        assert np.median(times) < 1 / 60, (zoom, times)
    assert painted_pixels(lanes[0].waveform_image()) > 1150 * 20


def test_the_decibel_scale_shows_quiet_stems() -> None:
    quiet = np.full(100, 0.01, np.float32)  # -40 dBFS
    red = QColor("red")
    linear = rasterise(-quiet, quiet, 100, 101, red)
    loud = rasterise(-quiet, quiet, 100, 101, red, decibels=True)
    assert painted_pixels(linear) <= 100 * 3  # a line
    assert painted_pixels(loud) > 100 * 30  # a third of the height
    assert decibel_scale(np.array([1.0, -1.0, 0.0]))[0] == 1.0
    assert decibel_scale(np.array([-1.0]))[0] == -1.0 and decibel_scale(np.array([0.0]))[0] == 0
