"""What goes into the frozen app, as plain data: read by `Demixer.spec` and by the tests.

No PyInstaller import here, so tests/test_packaging.py checks the Info.plist and the lists
without running a build. The spec adds what needs PyInstaller's hook utilities.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NAME = "Demixer"
BUNDLE_ID = "app.demixer.Demixer"
MIN_MACOS = "13.0"  # CoreML ML Programs with the ops the converted core uses need Ventura

# Audio files the app opens from Finder ("Open With", a drop on the Dock icon): extension,
# the UTIs macOS knows them by, and a name for Finder's "Kind" column. Every type the engine
# decodes (libsndfile, or FFmpeg through PyAV); role Viewer: the app reads them, never saves.
AUDIO_TYPES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("wav", ("com.microsoft.waveform-audio",), "WAVE audio"),
    ("aiff", ("public.aiff-audio", "public.aifc-audio"), "AIFF audio"),
    ("flac", ("org.xiph.flac",), "FLAC audio"),
    ("mp3", ("public.mp3",), "MP3 audio"),
    ("m4a", ("com.apple.m4a-audio", "public.mpeg-4-audio"), "MPEG-4 audio"),
    ("aac", ("public.aac-audio",), "AAC audio"),
    ("ogg", ("org.xiph.ogg-audio", "org.xiph.ogg"), "Ogg audio"),
    ("opus", ("org.xiph.opus",), "Opus audio"),
    ("caf", ("com.apple.coreaudio-format",), "Core Audio file"),
)
EXTENSIONS = ("wav", "wave", "aif", "aiff", "aifc", "flac", "mp3", "m4a", "aac", "alac",
              "mp4", "ogg", "oga", "opus", "caf", "wma", "webm", "mka")

# Modules reached only through data: demucs unpickles a checkpoint's `klass`
# (demucs.htdemucs.HTDemucs; the older architectures for completeness).
HIDDEN_IMPORTS = [
    "demucs.htdemucs", "demucs.hdemucs", "demucs.demucs", "demucs.transformer",
    "demucs.states", "demucs.apply", "demucs.pretrained", "demucs.repo",
    "scipy.fft", "soxr", "av", "lameenc", "einops", "yaml", "platformdirs", "certifi",
    "coremltools", "sounddevice", "_cffi_backend",
    "mlx.core", "mlx.nn",  # the MLX backend imports them lazily (hooks/hook-mlx.py)
]

# What the app never uses but hooks or loose imports would drag in.
EXCLUDES = [
    # GUI toolkits and notebooks
    "tkinter", "_tkinter", "matplotlib", "IPython", "ipykernel", "jupyter", "notebook",
    # test and dev tools (torch's hook reaches pytest through torch.testing helpers)
    "pytest", "_pytest", "pytestqt", "hypothesis", "expecttest", "mypy", "ruff",
    "PyInstaller", "pip", "setuptools", "pkg_resources",
    # torch extras with no use here
    "tensorboard", "torch.utils.tensorboard", "torchvision", "torchaudio", "triton",
    "coremltools.test",
    # OpenVINO's converters from other frameworks and its torch.compile backend
    "openvino.tools", "openvino.torch", "openvino.frontend.pytorch",
    "openvino.frontend.tensorflow", "openvino.frontend.paddle", "openvino.frontend.jax",
    # demucs's training, CLI, hub and file-reading code (we load checkpoints ourselves)
    "demucs.hf", "demucs.api", "demucs.separate", "demucs.train", "demucs.solver",
    "demucs.evaluate", "demucs.grids", "demucs.wav", "demucs.augment", "demucs.ema",
    "demucs.svd", "demucs.distrib", "demucs.repitch", "demucs.__main__",
    "huggingface_hub", "hf_xet", "sphn", "dora", "hydra", "musdb", "museval", "diffq",
    # Qt modules the widgets app does not load (PySide6 hooks follow imports; be explicit)
    "PySide6.QtQml", "PySide6.QtQuick", "PySide6.QtQuickWidgets", "PySide6.QtQuickControls2",
    "PySide6.QtQuick3D", "PySide6.Qt3DCore", "PySide6.Qt3DRender", "PySide6.QtWebEngineCore",
    "PySide6.QtWebEngineWidgets", "PySide6.QtWebChannel", "PySide6.QtWebSockets",
    "PySide6.QtPdf", "PySide6.QtPdfWidgets", "PySide6.QtSql", "PySide6.QtTest",
    "PySide6.QtDesigner", "PySide6.QtHelp", "PySide6.QtUiTools", "PySide6.QtCharts",
    "PySide6.QtDataVisualization", "PySide6.QtBluetooth", "PySide6.QtNfc",
    "PySide6.QtPositioning", "PySide6.QtSensors", "PySide6.QtSerialPort",
    "PySide6.QtRemoteObjects", "PySide6.QtScxml", "PySide6.QtTextToSpeech",
]

# Files that hooks collect wholesale but nothing loads at run time: PyTorch's C++ test
# programs and test libraries (~130 MB). torch_shm_manager stays: torch.multiprocessing
# starts it for shared memory.
TORCH_TEST_LIBRARIES = ("libjitbackend_test", "libtorchbind_test", "libbackend_with_compiler",
                        "libaoti_custom_ops")


# The runtimes of the exported core (engine.openvino_backend, engine.onnxruntime_backend) and
# the onnx package torch's exporter needs: bundled where installed (x86-64 Linux and Windows,
# pyproject.toml), imported lazily by the engine, so named here.
EXPORT_RUNTIMES = ("openvino", "onnxruntime", "onnx")

# OpenVINO's wheel carries every device and every framework: Demixer compiles ONNX for the
# CPU only. What it loads: libopenvino, the CPU plugin, the ONNX (and IR) front ends, TBB.
# OpenVINO finds its plugins next to libopenvino by name (no plugins.xml in these wheels).
OPENVINO_UNNEEDED = ("libopenvino_intel_gpu_plugin", "libopenvino_intel_npu_plugin",
                     "libopenvino_tensorflow_frontend", "libopenvino_tensorflow_lite_frontend",
                     "libopenvino_paddle_frontend", "libopenvino_pytorch_frontend",
                     "libopenvino_jax_frontend", "libopenvino_gguf_frontend", "libopenvino_c",
                     "libtbbmalloc_proxy", "cache.json", "tbb.pc")


def installed(names: tuple[str, ...] | list[str]) -> list[str]:
    """The packages of `names` installed here (a bundle takes what its venv has)."""
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is not None]


def openvino_libraries() -> list[tuple[str, str]]:
    """(source, bundle folder) of the files in OpenVINO's `libs` folder that Demixer loads (its
    library, the CPU plugin, the front ends, TBB; not `is_unneeded`)."""
    import importlib.util

    spec = importlib.util.find_spec("openvino")
    if spec is None or spec.origin is None:
        return []
    libs = Path(spec.origin).parent / "libs"
    return [(str(f), "openvino/libs") for f in sorted(libs.iterdir())
            if f.is_file() and not is_unneeded(f"openvino/libs/{f.name}")]


def is_unneeded(dest: str) -> bool:
    """True for a bundled file (its path inside the bundle) that the app never loads."""
    parts = dest.replace("\\", "/").split("/")
    if parts[0] == "openvino" and len(parts) >= 2:
        name = parts[-1]
        return parts[1] in ("include", "cmake", "tools") or (
            parts[1] == "libs" and (name in OPENVINO_UNNEEDED
                                    or name.split(".")[0] in OPENVINO_UNNEEDED))
    if parts[0] != "torch" or len(parts) < 3:
        return False
    if parts[1] == "test":
        return True
    if parts[1] == "bin":
        return parts[-1] != "torch_shm_manager"
    return parts[1] == "lib" and parts[-1].split(".")[0] in TORCH_TEST_LIBRARIES


def project_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The version in pyproject.toml ([project] version), e.g. '0.1.0'."""
    with pyproject.open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def document_types() -> list[dict[str, Any]]:
    """CFBundleDocumentTypes: one entry for all audio (public.audio covers types we did not
    list), so Finder offers the app under "Open With" and the Dock icon accepts drops."""
    utis = ["public.audio"] + [uti for _, group, _ in AUDIO_TYPES for uti in group]
    return [{
        "CFBundleTypeName": "Audio file",
        "CFBundleTypeRole": "Viewer",
        "LSHandlerRank": "Alternate",  # offered, never the default player for a file type
        "LSItemContentTypes": utis,
        "CFBundleTypeExtensions": list(EXTENSIONS),
    }]


def info_plist(version: str) -> dict[str, Any]:
    """The keys BUNDLE adds to PyInstaller's Info.plist (which sets the executable, the
    identifier and the icon file)."""
    return {
        "CFBundleName": NAME,
        "CFBundleDisplayName": NAME,
        "CFBundleShortVersionString": version,
        "CFBundleVersion": version,
        "CFBundleDevelopmentRegion": "en",
        "CFBundleDocumentTypes": document_types(),
        "LSMinimumSystemVersion": MIN_MACOS,
        "LSApplicationCategoryType": "public.app-category.music",
        "NSHighResolutionCapable": True,
        "NSRequiresAquaSystemAppearance": False,  # follow Dark Mode
        "NSSupportsAutomaticGraphicsSwitching": True,
        "NSHumanReadableCopyright": "Demixer contributors; MIT licence. "
                                    "HTDemucs models by Meta AI.",
    }
