"""User settings over QSettings, typed, with the app's defaults.

The app uses the platform's store (`~/Library/Preferences/...plist` on macOS); tests pass a
QSettings on an INI file in a temp folder, so no test reads or writes real settings.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

from engine.options import COMPUTE_UNITS, CONTAINERS, MODELS, QUALITIES, SAMPLE_FORMATS
from engine.writers import OutputFormat

# the option lists are the engine's (engine.options); Preferences offers these backends
BACKENDS = ("auto", "torch", "coreml")
MAX_RECENT = 10


def default_output_dir() -> Path:
    return Path.home() / "Music" / "Demixer"


class Settings:
    def __init__(self, store: QSettings | None = None) -> None:
        self.store = store if store is not None else QSettings("Demixer", "Demixer")

    def _get(self, key: str, default: object, kind: type) -> object:
        try:
            return self.store.value(key, default, type=kind)
        except (TypeError, ValueError):
            return default

    def _choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = str(self._get(key, default, str))
        return value if value in choices else default

    # --- separation ---------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self._choice("separation/model", MODELS, "htdemucs_6s")

    @model.setter
    def model(self, value: str) -> None:
        self.store.setValue("separation/model", value)

    @property
    def two_stems(self) -> bool:
        return bool(self._get("separation/two_stems", False, bool))

    @two_stems.setter
    def two_stems(self, value: bool) -> None:
        self.store.setValue("separation/two_stems", bool(value))

    @property
    def shifts(self) -> int:
        return max(0, min(20, int(self._get("separation/shifts", 1, int))))  # type: ignore

    @shifts.setter
    def shifts(self, value: int) -> None:
        self.store.setValue("separation/shifts", int(value))

    @property
    def backend(self) -> str:
        return self._choice("separation/backend", BACKENDS, "auto")

    @backend.setter
    def backend(self, value: str) -> None:
        self.store.setValue("separation/backend", value)

    @property
    def quality(self) -> str:
        """The gate the calibrated backend must pass (engine.calibrate): default, exact, fast."""
        return self._choice("separation/quality", QUALITIES, "default")

    @quality.setter
    def quality(self, value: str) -> None:
        self.store.setValue("separation/quality", value)

    @property
    def compute_units(self) -> str:
        return self._choice("separation/compute_units", COMPUTE_UNITS, "all")

    @compute_units.setter
    def compute_units(self, value: str) -> None:
        self.store.setValue("separation/compute_units", value)

    @property
    def segment(self) -> float | None:
        """Chunk length in seconds (no UI: the model's own unless set, e.g. by tests)."""
        value = float(self._get("separation/segment", 0.0, float))  # type: ignore[arg-type]
        return value if value > 0 else None

    @segment.setter
    def segment(self, value: float | None) -> None:
        self.store.setValue("separation/segment", float(value or 0.0))

    @property
    def resume_automatically(self) -> bool:
        """Resume separations a quit or crash interrupted as soon as the app opens."""
        return bool(self._get("separation/resume_automatically", False, bool))

    @resume_automatically.setter
    def resume_automatically(self, value: bool) -> None:
        self.store.setValue("separation/resume_automatically", bool(value))

    # --- output -------------------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        value = str(self._get("output/folder", "", str))
        return Path(value).expanduser() if value else default_output_dir()

    @output_dir.setter
    def output_dir(self, value: Path) -> None:
        self.store.setValue("output/folder", str(value))

    @property
    def container(self) -> str:
        return self._choice("output/container", CONTAINERS, "wav")

    @container.setter
    def container(self, value: str) -> None:
        self.store.setValue("output/container", value)

    @property
    def sample_format(self) -> str:
        return self._choice("output/sample_format", SAMPLE_FORMATS, "int24")

    @sample_format.setter
    def sample_format(self, value: str) -> None:
        self.store.setValue("output/sample_format", value)

    @property
    def mp3_bitrate(self) -> int:
        return int(self._get("output/mp3_bitrate", 320, int))  # type: ignore[call-overload]

    @mp3_bitrate.setter
    def mp3_bitrate(self, value: int) -> None:
        self.store.setValue("output/mp3_bitrate", int(value))

    def output_format(self) -> OutputFormat:
        return output_format(self.container, self.sample_format, self.mp3_bitrate)

    # --- playback, view, files, window ------------------------------------------------------
    @property
    def waveform_decibels(self) -> bool:
        return bool(self._get("view/decibels", False, bool))

    @waveform_decibels.setter
    def waveform_decibels(self, value: bool) -> None:
        self.store.setValue("view/decibels", bool(value))

    @property
    def audio_device(self) -> str:
        """An output device's name, or "" for the system default."""
        return str(self._get("playback/device", "", str))

    @audio_device.setter
    def audio_device(self, value: str) -> None:
        self.store.setValue("playback/device", value)

    @property
    def recent_files(self) -> list[str]:
        value = self._get("files/recent", [], list)
        return [str(v) for v in value] if isinstance(value, list) else []

    def add_recent(self, path: Path) -> None:
        text = str(path)
        recent = [text] + [p for p in self.recent_files if p != text]
        self.store.setValue("files/recent", recent[:MAX_RECENT])

    def clear_recent(self) -> None:
        self.store.setValue("files/recent", [])

    def window_state(self, key: str) -> QByteArray | None:
        value = self.store.value(f"window/{key}")
        return value if isinstance(value, QByteArray) else None

    def set_window_state(self, key: str, value: QByteArray) -> None:
        self.store.setValue(f"window/{key}", value)

    def sync(self) -> None:
        self.store.sync()


def output_format(container: str, sample_format: str, mp3_bitrate: int = 320) -> OutputFormat:
    """An engine OutputFormat from the app's choices (MP3 is always 16-bit in the encoder)."""
    if container == "mp3":
        sample_format = "int16"
    elif container == "flac" and sample_format == "float32":
        sample_format = "int24"
    return OutputFormat(container=container, sample_format=sample_format,  # type: ignore[arg-type]
                        mp3_bitrate=mp3_bitrate)
