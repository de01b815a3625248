"""Transport icons drawn in the palette's text colour, so they read in light and dark mode."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap, QPolygonF

SIZE = 44  # drawn at 2x for Retina screens


def transport_icon(kind: str, colour: QColor) -> QIcon:
    """'play', 'pause' or 'start' (go to the beginning)."""
    pixmap = QPixmap(SIZE, SIZE)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(colour)
    s = SIZE
    if kind == "play":
        painter.drawPolygon(QPolygonF([QPointF(s * 0.28, s * 0.18), QPointF(s * 0.82, s * 0.5),
                                       QPointF(s * 0.28, s * 0.82)]))
    elif kind == "pause":
        for x in (0.24, 0.58):
            painter.drawRoundedRect(QRectF(s * x, s * 0.2, s * 0.18, s * 0.6), 2, 2)
    else:
        painter.drawRoundedRect(QRectF(s * 0.2, s * 0.22, s * 0.1, s * 0.56), 1.5, 1.5)
        painter.drawPolygon(QPolygonF([QPointF(s * 0.8, s * 0.22), QPointF(s * 0.34, s * 0.5),
                                       QPointF(s * 0.8, s * 0.78)]))
    painter.end()
    pixmap.setDevicePixelRatio(2.0)
    return QIcon(pixmap)
