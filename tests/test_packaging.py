"""Packaging: the PyInstaller spec, the Info.plist, the icon, the frozen entry point and the
self-test, checked without building (CI builds and smoke-tests the real bundle separately)."""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import plistlib
import runpy
import shutil
import struct
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import engine
from engine.cli import selftest
from engine.cli.selftest import Context, engine_checks, isolated_user_data, run_check, run_checks

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_packaging_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"packaging_{name}", PACKAGING / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cfg = load_packaging_module("bundle_config")
entry = load_packaging_module("entry")


# --- the spec --------------------------------------------------------------------------------


class Recorder:
    """Stands in for one of PyInstaller's spec classes; remembers its arguments."""

    calls: dict[str, Recorder] = {}

    def __init__(self, kind: str, *args: Any, **kwargs: Any) -> None:
        self.kind, self.args, self.kwargs = kind, args, kwargs
        Recorder.calls[kind] = self
        self.pure: list[Any] = []
        self.scripts: list[Any] = []
        self.binaries: list[Any] = []
        self.datas: list[Any] = []


def run_spec(platform: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Recorder]:
    """Execute Demixer.spec as PyInstaller would on `platform`, recording the build steps."""
    import PyInstaller.utils.hooks  # noqa: F401 - imported on the real platform, before the patch

    Recorder.calls = {}
    names = ("Analysis", "PYZ", "EXE", "COLLECT", "BUNDLE")
    namespace: dict[str, Any] = {k: (lambda *a, _k=k, **kw: Recorder(_k, *a, **kw)) for k in names}
    namespace.update(SPECPATH=str(PACKAGING), __file__=str(PACKAGING / "Demixer.spec"))
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the spec inserts packaging/
    source = (PACKAGING / "Demixer.spec").read_text()
    exec(compile(source, str(PACKAGING / "Demixer.spec"), "exec"), namespace)
    return dict(Recorder.calls)


@pytest.fixture(scope="module")
def mac_spec() -> dict[str, Recorder]:
    with pytest.MonkeyPatch.context() as mp:
        return run_spec("darwin", mp)


def test_spec_analyses_the_entry_point_with_hooks(mac_spec: dict[str, Recorder]) -> None:
    analysis = mac_spec["Analysis"]
    assert analysis.args[0] == [str(PACKAGING / "entry.py")]
    assert all(Path(p).is_dir() for p in analysis.kwargs["hookspath"])
    assert all(Path(p).is_file() for p in analysis.kwargs["runtime_hooks"])
    hidden = set(analysis.kwargs["hiddenimports"])
    # checkpoints name their class in a pickle; the CLI and backends import lazily
    assert {"demucs.htdemucs", "engine.cli.selftest", "engine.cli", "engine.cli.separate",
            "app.main"} <= hidden
    assert {"tkinter", "matplotlib", "pytest", "demucs.hf"} <= set(analysis.kwargs["excludes"])


def test_spec_bundles_the_data_files_the_app_reads(mac_spec: dict[str, Recorder]) -> None:
    datas = {(Path(src).relative_to(Path(src).parents[1]).as_posix()
              if "demucs" in src else Path(src).name, dest)
             for src, dest in mac_spec["Analysis"].kwargs["datas"]}
    assert ("remote/files.txt", "demucs/remote") in datas
    assert ("remote/htdemucs_6s.yaml", "demucs/remote") in datas
    assert ("catalogue.json", "models") in datas
    assert ("cacert.pem", "certifi") in datas
    assert ("Demixer.png", "resources") in datas
    for src, _ in mac_spec["Analysis"].kwargs["datas"]:  # files, and packages' dist-info
        assert Path(src).is_file() or (Path(src).is_dir() and src.endswith(".dist-info")), src
    assert any(Path(src).name.startswith("torch-") for src, _ in
               mac_spec["Analysis"].kwargs["datas"])  # its version keys the ONNX exports


def test_spec_makes_a_windowed_mac_app(mac_spec: dict[str, Recorder]) -> None:
    exe, bundle = mac_spec["EXE"].kwargs, mac_spec["BUNDLE"]
    assert exe["name"] == "Demixer" and exe["exclude_binaries"] is True  # onedir
    assert exe["console"] is False and exe["argv_emulation"] is False
    assert bundle.kwargs["name"] == "Demixer.app"
    assert bundle.kwargs["bundle_identifier"] == "app.demixer.Demixer"
    assert Path(bundle.kwargs["icon"]).suffix == ".icns" and Path(bundle.kwargs["icon"]).is_file()
    with (ROOT / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert bundle.kwargs["version"] == version == engine.__version__
    assert bundle.kwargs["info_plist"]["LSMinimumSystemVersion"] == "13.0"
    libs = {Path(src).name for src, _ in mac_spec["Analysis"].kwargs["binaries"]}
    assert any(name.startswith("libmilstoragepython") for name in libs)  # coremltools natives


def test_spec_on_linux_makes_a_onedir_bundle_without_an_app(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = run_spec("linux", monkeypatch)
    assert "BUNDLE" not in calls
    assert calls["COLLECT"].kwargs["name"] == "Demixer"
    assert calls["EXE"].kwargs["icon"] is None


def test_developer_id_signing_uses_the_hardened_runtime_entitlements(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMIXER_SIGN_IDENTITY", "Developer ID Application: Demixer (TEAM123)")
    exe = run_spec("darwin", monkeypatch)["EXE"].kwargs
    assert exe["codesign_identity"] == "Developer ID Application: Demixer (TEAM123)"
    entitlements = plistlib.loads(Path(exe["entitlements_file"]).read_bytes())
    assert entitlements == {"com.apple.security.cs.allow-jit": True,
                            "com.apple.security.cs.allow-unsigned-executable-memory": True,
                            "com.apple.security.cs.disable-library-validation": True}


# --- Info.plist --------------------------------------------------------------------------------


def test_info_plist_declares_audio_documents_and_retina() -> None:
    raw = plistlib.dumps(cfg.info_plist("1.2.3"))  # raises on any non-plist value
    plist = plistlib.loads(raw)
    assert plist["CFBundleShortVersionString"] == plist["CFBundleVersion"] == "1.2.3"
    assert plist["NSHighResolutionCapable"] is True
    assert "NSMicrophoneUsageDescription" not in plist
    (doc,) = plist["CFBundleDocumentTypes"]
    assert doc["CFBundleTypeRole"] == "Viewer"
    assert doc["LSItemContentTypes"][0] == "public.audio"
    assert {"public.mp3", "com.microsoft.waveform-audio", "org.xiph.flac",
            "public.aiff-audio", "com.apple.m4a-audio"} <= set(doc["LSItemContentTypes"])
    assert all(e == e.lower() and "." not in e for e in doc["CFBundleTypeExtensions"])


def test_document_extensions_are_the_ones_the_cli_accepts() -> None:
    from engine.decode import AUDIO_SUFFIXES

    assert {f".{e}" for e in cfg.EXTENSIONS} <= AUDIO_SUFFIXES


# --- the icon ------------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def icns_entries(data: bytes) -> dict[bytes, bytes]:
    assert data[:4] == b"icns"
    assert struct.unpack(">I", data[4:8])[0] == len(data)
    entries, pos = {}, 8
    while pos < len(data):
        kind, length = data[pos:pos + 4], struct.unpack(">I", data[pos + 4:pos + 8])[0]
        assert length > 8 and pos + length <= len(data)
        entries[kind] = data[pos + 8:pos + length]
        pos += length
    return entries


@pytest.mark.parametrize("folder", ["committed", "generated"])
def test_icns_holds_every_size_as_png(folder: str, tmp_path: Path, qapp: Any) -> None:
    if folder == "generated":
        icon_tool = load_packaging_module("make_icon")
        icns, _ = icon_tool.write_icons(tmp_path)
    else:
        icns = ROOT / "resources" / "Demixer.icns"
    entries = icns_entries(icns.read_bytes())
    want = {b"ic07": 128, b"ic08": 256, b"ic09": 512, b"ic10": 1024,
            b"ic11": 32, b"ic12": 64, b"ic13": 256, b"ic14": 512}
    assert want.keys() <= entries.keys()
    for kind, data in entries.items():
        size = png_size(data)
        assert size == (want.get(kind, size[0]),) * 2, kind


def test_icon_is_a_rounded_square_on_transparency(tmp_path: Path, qapp: Any) -> None:
    from PySide6.QtGui import QImage

    _, png = load_packaging_module("make_icon").write_icons(tmp_path)
    image = QImage(str(png))
    assert (image.width(), image.height()) == (512, 512)
    assert image.pixelColor(0, 0).alpha() == 0  # outside the body: transparent
    assert image.pixelColor(256, 60).alpha() == 255  # the body: opaque
    assert image.pixelColor(60, 60).alpha() == 0  # a rounded corner, not a square's


# --- the frozen entry point ----------------------------------------------------------------


def test_entry_sends_self_test_to_the_self_test_with_the_app_checks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_self_test(argv: list[str], extra_checks: Any = ()) -> int:
        seen.update(argv=argv, extra=extra_checks)
        return 7

    monkeypatch.setattr(selftest, "main", fake_self_test)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    assert entry.main(["--self-test"]) == 7
    assert seen == {"argv": [], "extra": entry.APP_CHECKS}
    assert os.environ["QT_QPA_PLATFORM"] == "offscreen"


def test_entry_answers_the_window_probe_of_doctor_and_the_self_test(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The frozen app has no `-m app`: `Demixer --check-display` is its window probe."""
    import app.display

    monkeypatch.setattr(app.display, "check_display_main", lambda: 3)
    assert entry.main(["--check-display"]) == 3


def test_entry_sends_everything_else_to_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.launch

    seen: list[list[str]] = []
    def cli_main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    monkeypatch.setattr(app.launch, "main", cli_main)
    assert entry.main(["separate", "song.wav"]) == 3
    assert entry.main([]) == 3
    assert seen == [["separate", "song.wav"], []]


@pytest.mark.parametrize("name", [name for name, _ in entry.APP_CHECKS])
def test_app_checks_pass_here(name: str, qapp: Any) -> None:
    """What the frozen app adds to the self-test holds in the development install too
    (tests/run.sh sets QT_QPA_PLATFORM=offscreen for pytest-qt's application)."""
    outcome = run_check(name, dict(entry.APP_CHECKS)[name])
    assert outcome.ok, outcome.detail


def test_portaudio_runtime_hook_answers_with_the_bundled_library(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = tmp_path / "libportaudio.so.2"
    bundled.write_bytes(b"")
    original = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", original)  # restored afterwards
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    runpy.run_path(str(PACKAGING / "hooks" / "rthook_portaudio.py"))
    assert ctypes.util.find_library("portaudio") == str(bundled)
    assert ctypes.util.find_library("c") == original("c")


@pytest.mark.parametrize("script", ["build", "smoke-test"])
def test_shell_scripts_are_valid_bash(script: str) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    result = subprocess.run([bash, "-n", str(PACKAGING / script)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_torch_test_programs_are_left_out_and_nothing_torch_loads() -> None:
    assert cfg.is_unneeded("torch/test/atest")
    assert cfg.is_unneeded("torch/bin/test_api")
    assert cfg.is_unneeded("torch/lib/libtorchbind_test.so")
    assert not cfg.is_unneeded("torch/bin/torch_shm_manager")
    assert not cfg.is_unneeded("torch/lib/libtorch_cpu.so")
    assert not cfg.is_unneeded("torch/testing/_internal/common_utils.py")
    assert not cfg.is_unneeded("demucs/remote/files.txt")


def test_openvino_keeps_the_cpu_plugin_and_the_onnx_front_end_only() -> None:
    keep = ["libopenvino.so.2641", "libopenvino_intel_cpu_plugin.so", "libtbb.so.12",
            "libopenvino_onnx_frontend.so.2641", "libopenvino_ir_frontend.so.2641"]
    drop = ["libopenvino_intel_gpu_plugin.so", "libopenvino_intel_npu_plugin.so",
            "libopenvino_tensorflow_frontend.so.2641", "libopenvino_pytorch_frontend.so.2641",
            "cache.json"]
    assert not any(cfg.is_unneeded(f"openvino/libs/{name}") for name in keep)
    assert all(cfg.is_unneeded(f"openvino/libs/{name}") for name in drop)
    assert cfg.is_unneeded("openvino/include/openvino/core/model.hpp")
    assert not cfg.is_unneeded("openvino/_pyopenvino.cpython-311-x86_64-linux-gnu.so")
    assert not cfg.is_unneeded("onnxruntime/capi/libonnxruntime.so.1.32.0")


# --- the self-test -------------------------------------------------------------------------

PIPELINE = [name for name, _ in engine_checks(Context(Path("."))) if "CoreML" not in name]


@pytest.fixture(scope="module")
def self_tested(
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Context, dict[str, Any]]]:
    """The engine checks run once, in-process, with the tiny model. The CoreML conversion is
    left out here (25 s; tests/engine/test_convert.py covers it; CI's bundle smoke test runs
    the whole self-test)."""
    ctx = Context(tmp_path_factory.mktemp("selftest"))
    lines: list[str] = []
    with isolated_user_data(ctx.workdir / "home"):
        checks = [c for c in engine_checks(ctx) if c[0] in PIPELINE]
        outcomes = {o.name: o for o in run_checks(checks, out=lines.append)}
    yield ctx, {"outcomes": outcomes, "lines": lines}
    ctx["stems"].close()


def test_self_test_checks_pass_with_the_tiny_model(
        self_tested: tuple[Context, dict[str, Any]]) -> None:
    _, result = self_tested
    failed = {n: o.detail for n, o in result["outcomes"].items() if not o.ok}
    assert not failed
    assert list(result["outcomes"]) == PIPELINE
    assert all(line.startswith("  ok   ") for line in result["lines"])


def test_self_test_separates_into_six_stereo_stems_of_the_exact_length(
        self_tested: tuple[Context, dict[str, Any]]) -> None:
    ctx, _ = self_tested
    data = ctx["stem_data"]
    assert data.shape == (6, 2, selftest.SECONDS * 44100)
    assert np.isfinite(data).all()


def test_self_test_notices_a_written_stem_that_differs(
        self_tested: tuple[Context, dict[str, Any]]) -> None:
    import soundfile as sf

    ctx, _ = self_tested
    path = next(p for p in ctx["written"] if p.stem == "bass")
    audio, rate = sf.read(path, dtype="float32")
    original = audio.copy()
    audio[1000, 0] += 1e-3
    sf.write(path, audio, rate, subtype="FLOAT")
    try:
        outcome = run_check("written stems", lambda: selftest.check_written(ctx))
    finally:
        sf.write(path, original, rate, subtype="FLOAT")
    assert not outcome.ok and "bass.wav differs" in outcome.detail


def test_self_test_notices_stems_unlike_demucs(
        self_tested: tuple[Context, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, _ = self_tested
    monkeypatch.setitem(ctx.values, "reference", ctx["reference"] * 1.01)  # -40 dB error
    outcome = run_check("sum of stems", lambda: selftest.check_sum(ctx))
    assert not outcome.ok and "from demucs's sum" in outcome.detail


def test_a_check_after_a_failed_one_reports_what_it_missed(tmp_path: Path) -> None:
    outcome = run_check("separation", lambda: selftest.check_separation(Context(tmp_path)))
    assert not outcome.ok and "needs the 'repo'" in outcome.detail


def test_mlx_check_says_so_where_mlx_is_not_installed(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "mlx.core", None)  # `import mlx.core` raises ImportError
    outcome = run_check("MLX separation", lambda: selftest.check_mlx_separation(
        Context(tmp_path)))
    assert outcome.ok and outcome.detail == "skipped: MLX is not installed in this build"


def test_mlx_check_fails_when_frozen_with_mlx_outside_the_bundle(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("mlx.core", reason="MLX is not installed (tests/run.sh installs it)")
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    outcome = run_check("MLX separation", lambda: selftest.check_mlx_separation(
        Context(tmp_path)))
    assert not outcome.ok and "outside the app bundle" in outcome.detail


def test_mlx_hook_collects_the_native_library() -> None:
    pytest.importorskip("mlx.core", reason="MLX is not installed (tests/run.sh installs it)")
    hook = runpy.run_path(str(PACKAGING / "hooks" / "hook-mlx.py"))
    libs = {(Path(src).name.split(".")[0], dest) for src, dest in hook["binaries"]}
    assert ("libmlx", "mlx/lib") in libs
    assert {"mlx._reprlib_fix", "mlx.nn"} <= set(hook["hiddenimports"])
    if sys.platform == "darwin":
        assert ("mlx.metallib", "mlx/lib") in {(Path(s).name, d) for s, d in hook["datas"]}


def test_ca_check_fails_without_the_ca_file(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    import certifi

    monkeypatch.setattr(certifi, "where", lambda: str(tmp_path / "missing.pem"))
    outcome = run_check("CA bundle", selftest.check_ca_bundle)
    assert not outcome.ok and "missing" in outcome.detail


def test_ca_check_fails_when_frozen_with_a_file_outside_the_bundle(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    outcome = run_check("CA bundle", selftest.check_ca_bundle)
    assert not outcome.ok and "outside the app bundle" in outcome.detail


def test_self_test_main_exits_1_on_any_failure_and_cleans_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    workdirs: list[Path] = []

    def checks(ctx: Context) -> list[selftest.Check]:
        workdirs.append(ctx.workdir)
        def broken() -> str:
            selftest.expect(False, "no")
            return "unreachable"

        return [("fine", lambda: "yes"), ("broken", broken)]

    monkeypatch.setattr(selftest, "engine_checks", checks)
    lines: list[str] = []
    assert selftest.main([], out=lines.append) == 1
    assert len(lines) == 4 and lines[0].startswith("Demixer ")
    assert lines[1].startswith("  ok   fine: yes") and lines[2].startswith("  FAIL broken: no")
    assert lines[-1].startswith("self-test FAILED: 1 of 2 checks (broken)")
    assert not workdirs[0].exists()
    assert selftest.main([], extra_checks=[], out=lines.append) == 1  # still broken


def test_self_test_main_exits_0_when_all_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selftest, "engine_checks", lambda ctx: [("fine", lambda: "yes")])
    lines: list[str] = []
    assert selftest.main([], extra_checks=[("extra", lambda: "too")], out=lines.append) == 0
    assert lines[-1].startswith("self-test passed: 2 checks")


def test_self_test_leaves_the_user_data_dir_alone(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("DEMIXER_HOME", str(tmp_path / "user"))
    monkeypatch.setenv("DEMIXER_MODEL_REPO", str(tmp_path / "repo"))
    with isolated_user_data(tmp_path / "selftest-home"):
        assert os.environ["DEMIXER_HOME"] == str(tmp_path / "selftest-home")
        assert "DEMIXER_MODEL_REPO" not in os.environ
    assert os.environ["DEMIXER_HOME"] == str(tmp_path / "user")
    assert os.environ["DEMIXER_MODEL_REPO"] == str(tmp_path / "repo")


def test_snr_is_infinite_for_equal_signals_and_finite_otherwise() -> None:
    x = np.sin(np.arange(1000.0))
    assert selftest.snr_db(x, x) == float("inf")
    assert abs(selftest.snr_db(x * 1.1, x) - 20.0) < 1e-9


def test_openvino_libraries_include_the_onnx_front_end() -> None:
    """collect_dynamic_libs missed the versioned front ends: the bundle could not read ONNX."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:  # macOS arm64: not a dependency there
        assert cfg.openvino_libraries() == []
        return
    names = {Path(src).name.split(".")[0] for src, dest in cfg.openvino_libraries()}
    assert {"libopenvino", "libopenvino_intel_cpu_plugin", "libopenvino_onnx_frontend",
            "libtbb"} <= names
    assert "libopenvino_intel_gpu_plugin" not in names and "cache" not in names
    assert {dest for _, dest in cfg.openvino_libraries()} == {"openvino/libs"}
