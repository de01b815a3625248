"""Sets of half-open frame ranges: where a song's stems are final while it separates.

A seek-first separation finishes the song out of order (the chunks around the playhead first,
the skipped part afterwards), so "how far is it final" is a set of intervals, not one mark.
`Intervals` is immutable: a writer builds a new one and publishes it by assigning one
reference, so readers on other threads never see a half-updated set.

Positions are ints (frames at the model rate); a span (a, b) holds a <= x < b. Spans are kept
sorted, disjoint and not touching (touching spans are joined).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence

Span = tuple[int, int]


class Intervals:
    __slots__ = ("spans", "_starts")

    def __init__(self, spans: Iterable[Sequence[int]] = ()) -> None:
        merged: list[list[int]] = []
        for a, b in sorted((int(s[0]), int(s[1])) for s in spans):
            if b <= a:
                continue
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.spans: tuple[Span, ...] = tuple((a, b) for a, b in merged)
        self._starts = [a for a, _ in self.spans]

    @classmethod
    def upto(cls, frames: int) -> Intervals:
        """[0, frames): what one in-order run has made final."""
        return cls([(0, frames)])

    def __iter__(self) -> Iterator[Span]:
        return iter(self.spans)

    def __len__(self) -> int:
        return len(self.spans)

    def __bool__(self) -> bool:
        return bool(self.spans)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Intervals) and self.spans == other.spans

    def __hash__(self) -> int:
        return hash(self.spans)

    def __repr__(self) -> str:
        return f"Intervals({list(self.spans)})"

    def _span_at(self, x: int) -> Span | None:
        i = bisect_right(self._starts, x) - 1
        if i >= 0 and x < self.spans[i][1]:
            return self.spans[i]
        return None

    def contains(self, x: int) -> bool:
        return self._span_at(x) is not None

    def covers(self, a: int, b: int) -> bool:
        """Whether all of [a, b) is inside (an empty range always is)."""
        if b <= a:
            return True
        span = self._span_at(a)
        return span is not None and b <= span[1]

    def end_at(self, x: int) -> int:
        """The end of the span holding `x` (what is final from x on without a gap); x if none."""
        span = self._span_at(x)
        return x if span is None else span[1]

    def next_start(self, x: int) -> int | None:
        """The start of the first span that begins after `x`, None if there is none."""
        i = bisect_right(self._starts, x)
        return self.spans[i][0] if i < len(self.spans) else None

    @property
    def prefix(self) -> int:
        """How far the set is final from 0 on without a gap (the old single ready mark)."""
        return self.end_at(0)

    @property
    def total(self) -> int:
        return sum(b - a for a, b in self.spans)

    def add(self, a: int, b: int) -> Intervals:
        return Intervals([*self.spans, (a, b)])

    def union(self, other: Intervals) -> Intervals:
        return Intervals([*self.spans, *other.spans])

    def intersect(self, other: Intervals) -> Intervals:
        out: list[Span] = []
        i = j = 0
        while i < len(self.spans) and j < len(other.spans):
            (a, b), (c, d) = self.spans[i], other.spans[j]
            lo, hi = max(a, c), min(b, d)
            if lo < hi:
                out.append((lo, hi))
            if b < d:
                i += 1
            else:
                j += 1
        return Intervals(out)

    def gaps(self, lo: int, hi: int) -> Intervals:
        """[lo, hi) minus this set."""
        out: list[Span] = []
        at = lo
        for a, b in self.spans:
            if b <= at:
                continue
            if a >= hi:
                break
            if a > at:
                out.append((at, a))
            at = max(at, b)
        if at < hi:
            out.append((at, hi))
        return Intervals(out)

    def minus(self, other: Intervals) -> Intervals:
        out: list[Span] = []
        for a, b in self.spans:
            out.extend(other.gaps(a, b).spans)
        return Intervals(out)

    def to_json(self) -> list[list[int]]:
        return [[a, b] for a, b in self.spans]
