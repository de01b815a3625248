"""Names as a terminal may show them: control characters escaped.

A file name may hold any byte but `/` and NUL; printed raw, a newline or an escape sequence in
it breaks the one-line messages or rewrites the terminal. `printable` shows such characters as
Python escapes (`\\n`, `\\x1b`), and undecodable bytes (surrogate escapes) as `\\xNN`.
"""

from __future__ import annotations

import os
import unicodedata


def printable(value: object) -> str:
    """`str(value)` with control and format characters escaped; other text as it is."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if text.isprintable():
        return text
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if ch == " " or ch.isprintable():
        return ch
    if unicodedata.category(ch) in ("Zs",):
        return ch
    return ch.encode("unicode_escape").decode("ascii")
