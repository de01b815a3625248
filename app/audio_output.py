"""The output stream that drives the mixer's callback: PortAudio (sounddevice), or a silent
clock when there is no device, so the playhead, seeking and export keep working.

`import sounddevice` fails when PortAudio itself is missing (OSError), so it is guarded.
A device that disappears shows as the stream finishing on its own (`finished_callback`) or as
callbacks that stop arriving; `check()` (from the GUI's timer) turns either into a message.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from app.mixer import Mixer

try:
    import sounddevice as sd
except (ImportError, OSError):  # pragma: no cover - PortAudio missing
    sd = None

CLOCK_BLOCK = 512
STALL_S = 2.0  # no callback for this long while open: the device is gone


def output_devices() -> list[str]:
    """Names of the output devices PortAudio sees (empty without PortAudio or devices)."""
    if sd is None:
        return []
    try:
        devices: Any = sd.query_devices()
    except Exception:  # noqa: BLE001 - PortAudio errors have no common base worth naming
        return []
    return [str(d["name"]) for d in devices if d.get("max_output_channels", 0) > 0]


class _SilentClock:
    """Calls the mixer's callback at real-time pace into a scratch buffer (no device)."""

    def __init__(self, mixer: Mixer, samplerate: int) -> None:
        self.mixer = mixer
        self.samplerate = samplerate
        self._stop = threading.Event()
        self._out = np.zeros((CLOCK_BLOCK, mixer.channels), np.float32)
        self._thread = threading.Thread(target=self._run, name="demixer-clock", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start, frames = time.monotonic(), 0
        while not self._stop.is_set():
            self.mixer.callback(self._out, CLOCK_BLOCK, None, 0)
            frames += CLOCK_BLOCK
            delay = start + frames / self.samplerate - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -0.5:  # fell far behind (a suspended machine): do not catch up
                start, frames = time.monotonic(), 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)


class AudioOutput:
    def __init__(self, mixer: Mixer) -> None:
        self.mixer = mixer
        self.stream: Any = None
        self.clock: _SilentClock | None = None
        self.samplerate = 0
        self._closing = False
        self._finished = False  # NB: set by PortAudio's thread, read by the GUI
        self._last_count = 0
        self._last_change = time.monotonic()

    @property
    def is_open(self) -> bool:
        return self.stream is not None or self.clock is not None

    @property
    def silent(self) -> bool:
        return self.clock is not None

    def open(self, samplerate: int, device: str = "") -> str | None:
        """Start the output; None if a device plays, else the reason playback is silent."""
        self.close()
        self.samplerate = samplerate
        reason = self._open_stream(samplerate, device)
        if reason is not None:
            self.clock = _SilentClock(self.mixer, samplerate)
        self.mixer.output_active = True
        self._last_count, self._last_change = self.mixer.callbacks, time.monotonic()
        return reason

    def _open_stream(self, samplerate: int, device: str) -> str | None:
        if sd is None:
            return "PortAudio is not available, so playback is silent."
        try:
            stream = sd.OutputStream(samplerate=samplerate, channels=self.mixer.channels,
                                     dtype="float32", device=device or None, latency="high",
                                     callback=self.mixer.callback,
                                     finished_callback=self._on_finished)
            stream.start()
        except Exception as err:  # noqa: BLE001 - sd.PortAudioError, ValueError (no device)
            if not output_devices():
                return "No audio output device is connected, so playback is silent."
            named = f"“{device}”" if device else "The default audio output"
            return f"{named} cannot play ({_short(err)}), so playback is silent."
        self.stream, self._finished = stream, False
        return None

    def _on_finished(self) -> None:
        if not self._closing:
            self._finished = True

    def check(self) -> str | None:
        """From the GUI timer: a message if the device stopped under us (then closed)."""
        if self.stream is None:
            return None
        count, now = self.mixer.callbacks, time.monotonic()
        if count != self._last_count:
            self._last_count, self._last_change = count, now
        if self._finished or now - self._last_change > STALL_S:
            self.close()
            return "The audio output device went away; playback paused."
        return None

    def close(self) -> None:
        self._closing = True
        self.mixer.output_active = False
        try:
            if self.stream is not None:
                try:
                    self.stream.abort()
                    self.stream.close()
                except Exception:  # noqa: BLE001 - a vanished device may refuse politely
                    pass
                self.stream = None
            if self.clock is not None:
                self.clock.close()
                self.clock = None
        finally:
            self._closing = False


def _short(err: BaseException) -> str:
    text = str(err).strip().rstrip(".") or type(err).__name__
    return text.splitlines()[0][:120]
