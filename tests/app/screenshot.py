"""Start the real app, separate a song with a tiny random-weight model, save a screenshot.

    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python tests/app/screenshot.py \
        [resources/screenshot.png]

Everything it makes (model, song, library, settings) lives in a temporary folder; the window
is the app's own `MainWindow` in the app's own `DemixerApplication`, fed the song as
`demixer song.wav` would. The separation runs in the worker process as usual; when it is done
the script mutes the vocals (a karaoke mix), starts playback (silent without a sound card) for
a moment, and grabs the window. Waveforms are drawn on the decibel scale (View menu): the
stems of a random-weight model are quiet and noise-like; the picture is of the app, not of
the model's quality.

With DEMIXER_SHOT_PRACTICE=1 it shows the practice tools instead (docs/practice.png): an
A–B loop dragged on the ruler over bars 3–4, 80 % speed, +2 semitones, the bass soloed.
With DEMIXER_SHOT_SEEK=1 (docs/seek-first.png) it seeks to 60 % of the song as soon as the
separation starts, loops two bars there and grabs the window while the lanes show the
separated parts as islands: the playhead's region first, the start of the song growing too.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 24
RATE = 44100


def make_song(path: Path) -> Path:
    """A little groove: kick and hats, a bass line, chords and a melody (stereo, 24 s)."""
    t = np.arange(SECONDS * RATE) / RATE
    beat = 60 / 112
    kick = np.exp(-((t % beat) / 0.08)) * np.sin(2 * np.pi * 55 * (t % beat) ** 0.9 * 2)
    hats = np.random.default_rng(0).standard_normal(t.size) * np.exp(
        -(((t + beat / 2) % (beat / 2)) / 0.015)) * 0.25
    roots = np.array([55.0, 43.65, 49.0, 41.2])[(t // (4 * beat)).astype(int) % 4]
    bass = 0.5 * np.sin(2 * np.pi * roots * t) * (0.6 + 0.4 * np.exp(-((t % beat) / 0.2)))
    chords = sum(0.12 * np.sin(2 * np.pi * roots * 4 * r * t) for r in (1, 1.26, 1.5))
    notes = np.array([440, 494, 523, 587, 659, 587, 523, 494.0])[(t // beat).astype(int) % 8]
    voice = 0.25 * np.sin(2 * np.pi * notes * t + 2 * np.sin(2 * np.pi * 5 * t))
    voice *= (t % 16 > 8)  # the voice comes in halfway through each phrase
    mix = np.stack([0.8 * kick + hats + bass + chords + voice,
                    0.8 * kick + 0.7 * hats + bass + 1.2 * chords + 0.8 * voice])
    mix *= 0.8 / np.abs(mix).max()
    sf.write(path, mix.T.astype(np.float32), RATE, subtype="PCM_16")
    return path


def dark_palette():  # type: ignore[no-untyped-def]
    from PySide6.QtGui import QColor, QPalette

    palette = QPalette()
    R = QPalette.ColorRole
    for role, colour in ((R.Window, "#2b2b2d"), (R.Base, "#1e1e20"), (R.AlternateBase, "#262628"),
                         (R.WindowText, "#e6e6e6"), (R.Text, "#e6e6e6"), (R.Button, "#3a3a3c"),
                         (R.ButtonText, "#e6e6e6"), (R.Mid, "#6e6e73"), (R.Highlight, "#0a84ff"),
                         (R.HighlightedText, "#ffffff"), (R.Light, "#4a4a4c"), (R.Dark, "#151517")):
        palette.setColor(role, QColor(colour))
    return palette


def practise(window) -> None:  # type: ignore[no-untyped-def]
    """Loop two bars (as a drag on the ruler would), slow down, transpose, solo the bass."""
    bar = 4 * 60 / 112
    window.track_view.timeline.loopRequested.emit(int(2 * bar * RATE), int(4 * bar * RATE))
    window.practice.bar.speed.setValue(80)
    window.practice.bar.pitch.setValue(2)
    window.track_view.toggle(1, solo=True)
    window.seek(int(2.6 * bar * RATE))
    window.play()


def main(out: Path) -> int:
    work = Path(tempfile.mkdtemp(prefix="demixer-shot-"))
    os.environ["DEMIXER_HOME"] = str(work / "home")
    os.environ["DEMIXER_MODEL_REPO"] = str(work / "models")
    sys.path.insert(0, str(ROOT))
    from engine.testmodel import make_test_model

    make_test_model("htdemucs_6s", work / "models", seed=5, tiny=True)
    song = make_song(work / "Night Drive.wav")

    from PySide6.QtCore import QSettings, QTimer

    from app.main import DemixerApplication
    from app.mainwindow import MainWindow
    from app.queue import State
    from app.settings import Settings

    app = DemixerApplication(sys.argv[:1])
    if os.environ.get("DEMIXER_SHOT_DARK"):  # the dark look, as macOS's dark mode gives it
        app.setPalette(dark_palette())
    settings = Settings(QSettings(str(work / "settings.ini"), QSettings.Format.IniFormat))
    settings.segment = 3.0  # more chunks, so the lanes visibly fill in as it separates
    settings.waveform_decibels = True  # random-weight stems are quiet: show their shape
    window = MainWindow(settings)
    app.set_window(window)
    window.resize(1360, 840)
    window.move(20, 20)
    window.show()
    [item] = window.open_paths([str(song)])
    stage = {"n": 0}
    during = {"path": os.environ.get("DEMIXER_SHOT_DURING")}  # also a picture mid-way

    seeking = {"on": bool(os.environ.get("DEMIXER_SHOT_SEEK")), "sent": False, "ticks": 0}

    def seek_first() -> None:
        """Seek to 60 % (with a loop there) once separating; grab when there are islands."""
        if not seeking["sent"]:
            if item.state == State.SEPARATING and item.stage == "separating" and window.track:
                bar = 4 * 60 / 112
                a = int(0.6 * SECONDS * RATE)
                window.track_view.timeline.loopRequested.emit(a, a + int(2 * bar * RATE))
                window.seek(a)
                window.play()
                seeking["sent"] = True
            return
        final = window.track_view.timeline.final
        if len(final) >= 2 or item.state == State.DONE:
            seeking["ticks"] += 1
            if seeking["ticks"] == 6 or item.state == State.DONE:
                window.grab().save(str(out))
                print(f"saved {out}: final {final!r}")
                window.close()

    def poll() -> None:
        if seeking["on"]:
            seek_first()
            return
        if (during["path"] and item.state == State.SEPARATING and item.stage == "separating"
                and 0.4 < item.fraction < 0.7):
            window.grab().save(during["path"])
            print(f"saved {during['path']}")
            during["path"] = None
            return
        if item.state in (State.FAILED, State.CANCELLED):
            print(f"separation {item.state.value}: {item.message}", file=sys.stderr)
            app.exit(1)
        elif item.state == State.DONE and window.builder is not None and window.builder.complete:
            stage["n"] += 1
            if stage["n"] == 1 and os.environ.get("DEMIXER_SHOT_PRACTICE"):
                practise(window)
            elif stage["n"] == 1:
                vocals = next(h for h in window.track_view.headers if h.name.text() == "Vocals")
                vocals.mute.setChecked(True)  # a karaoke mix: the lane greys out
                window.seek(int(9.3 * RATE))
                window.play()
            elif stage["n"] == 25:  # ~0.8 s of playback later
                window.grab().save(str(out))
                print(f"saved {out}")
                window.close()

    timer = QTimer()
    timer.timeout.connect(poll)
    timer.start(33)
    QTimer.singleShot(180_000, lambda: app.exit(2))  # never hang a CI job
    code = app.exec()
    window.shutdown()
    return int(code)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "resources" / "screenshot.png"
    sys.exit(main(target.resolve()))
