"""Draw Demixer's icon with Qt (offscreen) and write `resources/Demixer.icns` and `.png`.

    .venv/bin/python packaging/make_icon.py [OUT_DIR]     (default: resources/)

The icon is vector-drawn at every size (no downscaling of one bitmap): a dark macOS-style
rounded square; on the left a white waveform (the song), which fans out to the right into six
coloured strands (the stems: drums, bass, other, vocals, guitar, piano). The `.icns` file is
written here in Python, no Apple tools needed: the format is a big-endian header
(`icns`, total length) followed by entries (4-byte type, length including the 8-byte entry
header, data), and since macOS 10.7 every entry may hold a PNG. Same Qt version, same bytes.
"""

from __future__ import annotations

import math
import os
import struct
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QPointF, QRectF, Qt  # noqa: E402
from PySide6.QtGui import (  # noqa: E402
    QBrush,
    QColor,
    QGuiApplication,
    QImage,
    QLinearGradient,
    QPainter,
    QPainterPath,
    QPen,
    QPolygonF,
)

# ICNS entry type -> pixel size. ic11..ic14 are the @2x variants of 16, 32, 128 and 256 pt.
ICNS_TYPES: dict[bytes, int] = {
    b"icp4": 16, b"icp5": 32, b"ic11": 32, b"ic12": 64, b"ic07": 128, b"ic13": 256,
    b"ic08": 256, b"ic14": 512, b"ic09": 512, b"ic10": 1024,
}
PNG_SIZE = 512  # resources/Demixer.png: the window icon on Linux and Windows

# The stems' colours (the app's mixer strips use the same order).
STEM_COLOURS = ("#ff5a5f", "#ffb400", "#7ed957", "#3ddcff", "#a678ff", "#ff7ad9")
CANVAS = 1024.0  # drawing units; every size scales this


def _body(p: QPainter) -> QPainterPath:
    """Apple's icon grid: an 824-unit rounded square centred on 1024, a soft shadow below."""
    rect = QRectF(100, 100, 824, 824)
    body = QPainterPath()
    body.addRoundedRect(rect, 185, 185)
    for i in range(12):  # the shadow: stacked translucent outlines, larger and fainter
        shadow = QPainterPath()
        grow = 2.0 * i
        shadow.addRoundedRect(rect.adjusted(-grow, -grow + 10, grow, grow + 10),
                              185 + grow, 185 + grow)
        p.fillPath(shadow, QColor(0, 0, 0, 9))
    gradient = QLinearGradient(QPointF(512, 100), QPointF(512, 924))
    gradient.setColorAt(0.0, QColor("#2f3280"))
    gradient.setColorAt(1.0, QColor("#10122c"))
    p.fillPath(body, QBrush(gradient))
    return body


def _mix_bars(p: QPainter) -> None:
    """The song: a white bar waveform whose envelope swells towards the split point."""
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor(255, 255, 255, 235))
    for i in range(9):
        x = 196 + i * 30
        envelope = 0.35 + 0.65 * math.sin(math.pi * (i + 1) / 11)
        jitter = (0.55, 0.9, 0.7, 1.0, 0.62, 0.95, 0.78, 0.88, 0.6)[i]
        half = 150 * envelope * jitter
        p.drawRoundedRect(QRectF(x, 512 - half, 18, 2 * half), 9, 9)


def _strand(index: int) -> QPainterPath:
    """Stem `index`: a sine strand leaving the split point and easing out to its own height."""
    target = 512 + (index - 2.5) * 82
    points = []
    steps = 120
    for k in range(steps + 1):
        t = k / steps
        ease = t * t * (3 - 2 * t)  # smoothstep from the centre line to the target
        amplitude = 6 + 16 * t
        wave = amplitude * math.sin(2 * math.pi * (2.2 * t + index / 6))
        points.append(QPointF(470 + t * 360, 512 + (target - 512) * ease + wave))
    # One call for the whole line: PySide6 6.12.0 on Python 3.11 drops a reference to None on
    # every call of a void method (see packaging/entry.py), so per-point lineTo() would crash.
    path = QPainterPath()
    path.addPolygon(QPolygonF(points))
    return path


def draw(size: int) -> QImage:
    """The icon at `size` x `size` pixels, ARGB32 premultiplied, transparent outside."""
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    p = QPainter(image)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.scale(size / CANVAS, size / CANVAS)
    body = _body(p)
    p.setClipPath(body)
    _mix_bars(p)
    for i, colour in enumerate(STEM_COLOURS):
        pen = QPen(QColor(colour), 22, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap,
                   Qt.PenJoinStyle.RoundJoin)
        p.strokePath(_strand(i), pen)
    p.end()
    return image


def png_bytes(image: QImage) -> bytes:
    data = QByteArray()
    buf = QBuffer(data)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    if not image.save(buf, "PNG"):
        raise RuntimeError("Qt could not encode a PNG")
    buf.close()
    return bytes(data.data())


def icns_bytes(entries: dict[bytes, bytes]) -> bytes:
    """An ICNS container for `entries` (type -> PNG data)."""
    body = b"".join(kind + struct.pack(">I", 8 + len(data)) + data
                    for kind, data in entries.items())
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def write_icons(out_dir: Path) -> tuple[Path, Path]:
    """Write `Demixer.icns` and `Demixer.png` into `out_dir`; returns their paths."""
    _app = QGuiApplication.instance() or QGuiApplication([sys.argv[0], "-platform", "offscreen"])
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = {size: png_bytes(draw(size)) for size in sorted(set(ICNS_TYPES.values()))}
    icns = out_dir / "Demixer.icns"
    icns.write_bytes(icns_bytes({kind: pngs[size] for kind, size in ICNS_TYPES.items()}))
    png = out_dir / "Demixer.png"
    png.write_bytes(pngs[PNG_SIZE])
    return icns, png


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "resources"
    for path in write_icons(out):
        print(f"{path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
