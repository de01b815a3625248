"""The playback mixer: lanes summed with per-lane gains in the audio callback. Qt-free.

Three threads touch a `Mixer`:
  - the GUI calls `load`, `play`, `pause`, `seek`, `set_gains` and reads `position`;
  - the feeder thread (`fill_step`) copies lane audio from disk into a preallocated ring
    (RING_FRAMES per lane) ahead of the playhead, never past the end of the final interval
    it is in (`practice.ready_until`: a seek-first separation finishes the song out of order),
    through a `practice.Shaper` that loops A–B and changes speed and pitch (so the ring holds
    output frames; `src_of` maps each to the song frame it plays, for the playhead);
  - the audio callback (`callback`) mixes from the ring into `outdata`.

The callback follows DESIGN.md rule 3: no allocation of buffers (every array is preallocated,
every ufunc writes with `out=`), no locks, no logging, no I/O, no Qt; it always fills all of
`outdata` (zeros when paused, past the end, or outside the final intervals — where it waits).
Gain changes ramp linearly over RAMP_FRAMES (10 ms); play and pause fade over the same time.

Playing a song that is still separating (`EdgeFade`, `playable_end`): a seek may land where
nothing is final yet; the playhead goes there and waits in silence until it is. Playback runs
to the end of the interval it is in and waits at its edge, fading out over the last
RAMP_FRAMES before it (no click), and fades in again when the separator has filled the gap.
When the next interval joins before the playhead gets there, the feeder simply reads on: the
ring is continuous, so the join is inaudible.

NB: thread-safety without locks. Every shared value has one writer and is a single reference
or int store (atomic in CPython):
  - `_Session.seek_to`/`seek_gen`: written by the GUI (seek_to first, then the generation);
  - `_Session.fill` = (gen, start, end, edge): written by the feeder; the ring holds frames
    [start, end) of seek generation `gen`; it writes only frames >= end, and only up to
    position + RING_FRAMES, so it never touches a slot the callback may still read; `edge`
    is the ring frame where the shaper stopped at the end of a final interval when the
    feeder last looked (NO_EDGE while it can go on);
  - `_Session.play_gen`/`position`/`reading_to`: written by the callback;
  - `_Session.practice`: a new frozen `Practice` assigned by the GUI; the feeder takes it up
    by pulling `fill`'s end back to FLUSH_FRAMES past what the callback is reading (a flush,
    not a restart) and crossfading the new frames over the old ones still in the ring;
  - `_Session.gains`: a new array assigned by the GUI, never mutated in place; while the
    speed or pitch is changed only audible lanes are stretched, so a lane that becomes
    audible is taken up by a flush like a practice change (heard ~70 ms later);
  - `transport`: 1.0 playing / 0.0 paused, written by the GUI.
A song change swaps the whole `_Session` reference, so the callback sees one song or the other.
Closing a song is deterministic: `release` swaps the session out, then takes the feeder's lock,
which the feeder holds for each whole `fill_step` (reading the session inside it); once
`release` has it, no read of the old track runs or can start, and the caller may close its
files. (The callback never takes it: it reads only the ring.) The threads: docs/architecture.md.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from app.practice import Practice, Shaper
from app.track import TrackAudio

RAMP_FRAMES = 441  # 10 ms at 44.1 kHz
MAX_BLOCK = 2048  # frames mixed per inner step (the callback loops over larger buffers)
RING_FRAMES = 1 << 17  # ~3 s per lane ahead of the playhead
FEED_FRAMES = 8192
FIRST_STEP_FRAMES = 1024  # what a fill step makes when the ring is nearly empty
NO_EDGE = 1 << 62  # `_Session.fill`'s edge while the shaper can go on
FLUSH_FRAMES = 3072  # a change is heard 70 ms on (the restarted stretcher is primed: no
# latency of its own); the feeder has those 70 ms to make the first new frames (~21 ms of
# CPU for six stretched lanes here)


def playable_end(track: TrackAudio, frame: int) -> int:
    """How far the mixer may read from `frame` on: the end of the final interval holding it
    (`frame` itself if it is not final yet, the song's end once complete)."""
    return track.playable_end(frame)


class EdgeFade:
    """The callback's fade-out before the edge of a final interval it must stop at.

    gain(t) = min(1, (edge - x_t) / RAMP_FRAMES) for frame x_t: 1 until RAMP_FRAMES before the
    edge, 1 / RAMP_FRAMES on the last frame before it. Computed into preallocated buffers.
    """

    def __init__(self, channels: int) -> None:
        self._t = np.repeat(np.arange(MAX_BLOCK, dtype=np.float32)[:, None], channels, axis=1)
        self._gain = np.zeros((MAX_BLOCK, channels), np.float32)

    @staticmethod
    def applies(position: int, n: int, edge: int, frames: int) -> bool:
        """Whether frames [position, position + n) come within RAMP_FRAMES of a real edge
        (not the song's end)."""
        return edge < frames and position + n > edge - RAMP_FRAMES

    def apply(self, out: np.ndarray, position: int, n: int, edge: int) -> None:
        """Multiply out[:n] (frames from `position`) by the fade towards `edge`."""
        o = 0
        while o < n:
            k = min(n - o, MAX_BLOCK)
            g = self._gain[:k]
            np.subtract(np.float32(edge - position - o), self._t[:k], out=g)
            np.multiply(g, np.float32(1.0 / RAMP_FRAMES), out=g)
            np.minimum(g, np.float32(1.0), out=g)
            np.maximum(g, np.float32(0.0), out=g)
            np.multiply(out[o:o + k], g, out=out[o:o + k])
            o += k


class _Session:
    """Per-song state shared by the GUI, the feeder and the callback (see module NB)."""

    def __init__(self, track: TrackAudio, gains: np.ndarray) -> None:
        lanes, channels = len(track.lanes), track.channels
        self.track = track
        self.lanes = lanes
        self.ring = np.zeros((lanes, RING_FRAMES, channels), np.float32)
        self.fill: tuple[int, int, int, int] = (0, 0, 0, NO_EDGE)
        self.seek_to, self.seek_gen = 0, 1
        self.play_gen, self.position = 0, 0
        self.reading_to = 0  # the callback mixes ring frames below this
        self.practice = Practice()  # replaced by the GUI
        self.src_of = np.zeros(RING_FRAMES, np.float64)  # ring slot -> song frame
        self.gains = np.array(gains, np.float32)  # target, replaced by the GUI
        self.seen_gains = self.gains  # the target the callback ramps to
        self.ramp_from = self.gains.copy()
        self.ramp_to = self.gains.copy()
        self.ramp_pos = RAMP_FRAMES  # >= RAMP_FRAMES: no ramp in progress
        self.gain_delta = np.zeros(lanes, np.float32)
        # feeder-only buffers
        self.shaper = Shaper(track, FEED_FRAMES)
        self.shaped_for: Practice | None = None  # the Practice the ring's frames were made with
        self.out = np.zeros((lanes, FEED_FRAMES, channels), np.float32)
        self.out_src = np.zeros(FEED_FRAMES, np.float64)
        self.xfade = 0  # frames of old ring audio after fill's end to crossfade into


def _audible(s: _Session) -> tuple[bool, ...]:
    """Which lanes sound (the GUI's target gains): only those are stretched."""
    return tuple(bool(g > 0) for g in s.gains)


def _restretch(s: _Session) -> bool:
    """Stretching, and a lane became audible or silent: flush, to stretch just those."""
    return not s.shaped_for.rate.identity and _audible(s) != s.shaper.audible \
        if s.shaped_for is not None else False


class Mixer:
    def __init__(self, channels: int = 2) -> None:
        self.channels = channels
        self._session: _Session | None = None
        self.transport = 0.0  # GUI: 1.0 play, 0.0 pause
        self._fade_from, self._fade_to, self._fade_pos = 0.0, 0.0, RAMP_FRAMES
        self.output_active = False  # set by the output: callbacks are being made
        self.callbacks = 0  # plain counters for the GUI's timer
        self.xruns = 0
        # (frames, C) like outdata: same-shape ufuncs need no broadcasting buffers
        self._t = np.repeat(np.arange(MAX_BLOCK, dtype=np.float32)[:, None], channels, axis=1)
        self._ramp = np.zeros((MAX_BLOCK, channels), np.float32)
        self._gain = np.zeros((MAX_BLOCK, channels), np.float32)
        self._tmp = np.zeros((MAX_BLOCK, channels), np.float32)
        self._edge_fade = EdgeFade(channels)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._feeder: threading.Thread | None = None
        # NB: held by the feeder around each fill_step, by `release` to wait for one to end
        self._feed_lock = threading.Lock()

    # --- GUI side ---------------------------------------------------------------------

    @property
    def track(self) -> TrackAudio | None:
        s = self._session
        return None if s is None else s.track

    def load(self, track: TrackAudio | None, gains: Sequence[float] | None = None) -> None:
        """Play `track` from its start (paused), with per-lane `gains` (default all 1)."""
        self.transport = 0.0
        if track is None:
            self._session = None
            return
        g = np.ones(len(track.lanes), np.float32) if gains is None else np.asarray(gains)
        self._session = _Session(track, g)
        self._wake.set()

    def release(self, track: TrackAudio) -> None:
        """Unload `track` if loaded, and return once the feeder cannot read it any more (a
        read in progress has ended; the next one takes the new session), so the caller may
        close its files."""
        s = self._session
        if s is not None and s.track is track:
            self.load(None)
        with self._feed_lock:  # NB: the acknowledgement: the feeder is between two steps
            pass

    def play(self) -> None:
        self.transport = 1.0

    def pause(self) -> None:
        self.transport = 0.0

    @property
    def playing(self) -> bool:
        return self.transport > 0.0

    def seek(self, frame: int) -> int:
        """Move the playhead to `frame` (clamped to the song); returns where it went. Where
        nothing is final yet, playback waits there until it is."""
        s = self._session
        if s is None:
            return 0
        frame = max(0, min(int(frame), s.track.frames))
        s.seek_to = frame
        s.seek_gen += 1  # NB: publishes the seek (seek_to is written first)
        self._wake.set()
        return frame

    def set_gains(self, gains: Sequence[float]) -> None:
        s = self._session
        if s is not None:
            s.gains = np.array(gains, np.float32)  # NB: a new array, assigned at once

    def set_practice(self, practice: Practice) -> None:
        """Loop, speed and pitch from now on (heard within ~70 ms, without a gap)."""
        s = self._session
        if s is not None:
            s.practice = practice  # NB: one reference store; the feeder flushes to it
            self._wake.set()

    @property
    def practice(self) -> Practice:
        s = self._session
        return Practice() if s is None else s.practice

    @property
    def gains(self) -> np.ndarray:
        s = self._session
        return np.zeros(0, np.float32) if s is None else s.gains

    @property
    def position(self) -> int:
        """The playhead (frames at the track's rate), including a seek not yet taken up."""
        s = self._session
        if s is None:
            return 0
        if s.seek_gen != s.play_gen:
            return s.seek_to
        g, start, end, _ = s.fill
        p = s.position
        if g != s.play_gen or end <= start or p < start:
            return p
        if p < end:  # NB: slots below end were written before end was published
            return int(s.src_of[p % RING_FRAMES])
        if s.shaper.exhausted:  # played to the end (stretched: the last frame's source
            return s.track.frames  # may round to just before it)
        return int(s.src_of[(end - 1) % RING_FRAMES]) + 1

    @property
    def waiting(self) -> bool:
        """Playing, but stopped where nothing is separated yet (an interval's edge, or a seek
        past what is final)."""
        s = self._session
        if s is None or not self.playing or s.track.complete:
            return False
        position = self.position
        return position < s.track.frames and playable_end(s.track, position) <= position

    # --- feeder ----------------------------------------------------------------------

    def start_feeder(self) -> None:
        if self._feeder is None:
            self._feeder = threading.Thread(target=self._feed_loop, name="demixer-feeder",
                                            daemon=True)
            self._feeder.start()

    def stop_feeder(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._feeder is not None:
            self._feeder.join(2.0)
            self._feeder = None
        self._stop.clear()

    def _feed_loop(self) -> None:
        while not self._stop.is_set():
            with self._feed_lock:  # NB: the session is read inside (see `release`)
                worked = self.fill_step(self._session)
            if not worked:
                self._wake.wait(0.01)
                self._wake.clear()

    def fill_step(self, session: _Session | None = None) -> bool:
        """Shape up to FEED_FRAMES of every lane into the ring; whether anything was written."""
        s = session or self._session
        if s is None:
            return False
        gen = s.seek_gen
        if s.fill[0] != gen:
            if self.output_active and s.play_gen != gen:
                return False  # NB: the callback may still read the old ring; wait for it
            s.fill, s.xfade = (gen, s.seek_to, s.seek_to, NO_EDGE), 0
            s.shaped_for = s.practice
            s.shaper.restart(s.seek_to, s.practice, _audible(s))
        elif s.practice is not s.shaped_for or _restretch(s):
            self._flush(s)
        g, start, end, edge = s.fill
        played = s.position if s.play_gen == g else start
        # little ahead (a seek or a flush): a short step first, so the callback gets audio soon
        n = min(FEED_FRAMES, max(FIRST_STEP_FRAMES, end - played), played + RING_FRAMES - end)
        if n <= 0:
            return False
        n = s.shaper.produce(s.out[:, :n], s.out_src[:n])
        if n <= 0:  # at the end of a final interval (or of the song): the callback fades there
            if edge != end:
                s.fill = (g, start, end, end)
            return False
        self._write_ring(s, end, n)
        s.fill = (g, start, end + n, NO_EDGE)  # NB: published after the ring is written
        return True

    def _flush(self, s: _Session) -> None:
        """Take up a new Practice: keep only FLUSH_FRAMES ahead of what the callback reads,
        and go on from the song frame there with the new settings."""
        g, start, end, _ = s.fill
        practice = s.practice
        played = s.position if s.play_gen == g else start
        keep = min(end, max(played + FLUSH_FRAMES, s.reading_to + 256))
        s.fill = (g, start, keep, NO_EDGE)  # NB: first: the callback never reads what is rewritten
        src = int(round(s.src_of[keep % RING_FRAMES])) if keep < end else s.shaper.next_source
        s.xfade = end - keep
        s.shaped_for = practice
        s.shaper.restart(src, practice, _audible(s))

    def _write_ring(self, s: _Session, end: int, n: int) -> None:
        """Copy s.out[:, :n] to ring slots from `end` (wrapping), crossfading over the frames
        a flush left there (so a change of loop, speed or pitch does not click)."""
        x = min(n, s.xfade, RAMP_FRAMES)
        if x > 0:
            idx = (end + np.arange(x)) % RING_FRAMES
            w = ((np.arange(x, dtype=np.float32) + 1) / (x + 1))[None, :, None]
            s.out[:, :x] = s.ring[:, idx] * (1 - w) + s.out[:, :x] * w
        s.xfade = 0
        slot = end % RING_FRAMES
        first = min(n, RING_FRAMES - slot)
        s.ring[:, slot:slot + first] = s.out[:, :first]
        s.ring[:, :n - first] = s.out[:, first:n]
        s.src_of[slot:slot + first] = s.out_src[:first]
        s.src_of[:n - first] = s.out_src[first:n]

    # --- the audio callback ------------------------------------------------------------

    def callback(self, outdata: np.ndarray, frames: int, time_info: object, status: object) -> None:
        """sounddevice's OutputStream callback: outdata (frames, C) float32."""
        outdata.fill(0.0)
        self.callbacks += 1
        if status:
            self.xruns += 1
        s = self._session
        if s is None:
            return
        gen = s.seek_gen
        if gen != s.play_gen:
            s.position = s.reading_to = s.seek_to
            s.play_gen = gen
        self._start_fade()
        if self._fade_to == 0.0 and self._fade_pos >= RAMP_FRAMES:
            self._snap_gains(s)
            return  # paused
        g, start, end, edge = s.fill
        n = min(frames, end - s.position) if g == s.play_gen and start <= s.position else 0
        if n <= 0:  # past the end or outside the final intervals: silence, and wait there
            if self._fade_to > 0.0:  # fade in again when the audio arrives
                self._fade_from, self._fade_pos = 0.0, 0
            else:
                self._fade_pos = RAMP_FRAMES
            self._snap_gains(s)
            return
        s.reading_to = s.position + n  # NB: the feeder keeps clear of these frames
        self._start_ramp(s)
        self._mix(s, outdata, n)
        if EdgeFade.applies(s.position, n, edge, NO_EDGE):
            self._edge_fade.apply(outdata, s.position, n, edge)
        self._apply_fade(outdata, n)
        s.position += n
        s.ramp_pos += n
        self._fade_pos += n

    def _start_fade(self) -> None:
        target = self.transport
        if target != self._fade_to:
            frac = min(1.0, self._fade_pos / RAMP_FRAMES)
            self._fade_from += (self._fade_to - self._fade_from) * frac
            self._fade_to, self._fade_pos = target, 0

    def _start_ramp(self, s: _Session) -> None:
        """Begin a ramp from the current gains when the GUI has assigned new ones."""
        target = s.gains
        if target is s.seen_gains or target.shape != s.ramp_to.shape:
            return
        frac = min(1.0, s.ramp_pos / RAMP_FRAMES)
        np.subtract(s.ramp_to, s.ramp_from, out=s.gain_delta)
        np.multiply(s.gain_delta, frac, out=s.gain_delta)
        np.add(s.ramp_from, s.gain_delta, out=s.ramp_from)
        np.copyto(s.ramp_to, target)
        s.seen_gains = target
        s.ramp_pos = 0

    def _snap_gains(self, s: _Session) -> None:
        """While silent, gains jump straight to their targets (nothing can click)."""
        if s.gains is not s.seen_gains and s.gains.shape == s.ramp_to.shape:
            np.copyto(s.ramp_to, s.gains)
            s.seen_gains = s.gains
        np.copyto(s.ramp_from, s.ramp_to)
        s.ramp_pos = RAMP_FRAMES

    def _ramp_into(self, k: int, pos: int) -> np.ndarray:
        """r[t, c] = min(1, (pos + t + 1) / RAMP_FRAMES) for t < k, in a preallocated buffer."""
        r = self._ramp[:k]
        np.add(self._t[:k], np.float32(pos + 1), out=r)
        np.multiply(r, np.float32(1.0 / RAMP_FRAMES), out=r)
        np.minimum(r, np.float32(1.0), out=r)
        return r

    def _mix(self, s: _Session, out: np.ndarray, n: int) -> None:
        """out[:n] = sum over lanes of gain(t) * ring, from s.position, in ring-contiguous steps."""
        o = 0
        while o < n:
            slot = (s.position + o) % RING_FRAMES
            k = min(n - o, MAX_BLOCK, RING_FRAMES - slot)
            ramping = s.ramp_pos + o < RAMP_FRAMES
            r = self._ramp_into(k, s.ramp_pos + o) if ramping else self._ramp[:0]
            dst, tmp, gain = out[o:o + k], self._tmp[:k], self._gain[:k]
            for lane in range(s.lanes):
                lo, hi = s.ramp_from[lane], s.ramp_to[lane]
                seg = s.ring[lane, slot:slot + k]
                if ramping and lo != hi:
                    np.multiply(r, hi - lo, out=gain)
                    np.add(gain, lo, out=gain)
                    np.multiply(seg, gain, out=tmp)
                elif hi != 0.0:
                    np.multiply(seg, hi, out=tmp)
                else:
                    continue
                np.add(dst, tmp, out=dst)
            o += k

    def _apply_fade(self, out: np.ndarray, n: int) -> None:
        """Multiply out[:n] by the play/pause fade, if one is in progress."""
        if self._fade_pos >= RAMP_FRAMES:
            if self._fade_to == 0.0:
                out[:n].fill(0.0)
            return
        lo, hi, o = self._fade_from, self._fade_to, 0
        while o < n:
            k = min(n - o, MAX_BLOCK)
            r = self._ramp_into(k, self._fade_pos + o)
            gain = self._gain[:k]
            np.multiply(r, np.float32(hi - lo), out=gain)
            np.add(gain, np.float32(lo), out=gain)
            np.multiply(out[o:o + k], gain, out=out[o:o + k])
            o += k
