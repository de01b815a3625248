"""Seek-first in the app: a seek while the song separates travels GUI -> queue -> worker
process -> job, the separator goes there first, and the lanes show the islands."""

from __future__ import annotations

from pathlib import Path

from app.queue import State
from engine.intervals import Intervals
from tests.app.gui import wait_for
from tests.engine.audio_files import sine_mix, write_wav


def test_a_seek_while_separating_is_separated_first(window, settings, model_repo,  # type: ignore[no-untyped-def]
                                                    tmp_path: Path, qtbot) -> None:
    settings.segment = 1.5  # many chunks: the in-order front takes a while to get to 70 %
    song = write_wav(tmp_path / "long.wav", sine_mix(40.0, 44100, amplitude=0.4), 44100)
    timeline = window.track_view.timeline
    finals: list[Intervals] = []
    timeline.readyChanged.connect(lambda: finals.append(timeline.final))
    [item] = window.open_paths([song])
    qtbot.waitUntil(lambda: window.track is not None, timeout=60000)
    target = int(0.7 * window.track.frames)
    window.seek(target)
    assert window.mixer.position == target  # the playhead goes there, not to the edge
    wait_for(qtbot, item, timeout_s=300)
    assert item.state == State.DONE, item.message
    # the playhead's island was final while the front from the start was far behind it
    assert any(f.contains(target) and f.prefix < target // 2 for f in finals), finals[:8]
    assert any(len(f) > 1 for f in finals)  # drawn as islands on the way
    # then the gap was filled: the lanes show the whole song (the last update may reach the
    # timeline just after the queue marks the song done; both come through the event loop)
    frames = window.track.frames
    qtbot.waitUntil(lambda: timeline.final.covers(0, frames), timeout=10000)
