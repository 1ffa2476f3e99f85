"""Cutting a serial byte stream into frames, and wrapping outgoing payloads the same way.

A serial line has no message boundaries: bytes arrive in arbitrary chunks, a device may be
switched on half-way through a frame, and line noise produces garbage. Every framer here is
a small synchronous state machine fed with chunks; it never holds more than
`max_frame_bytes` and always finds its way back to the next good frame (resynchronisation),
so garbage costs bytes, never the session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "DelimitedFraming",
    "FixedFraming",
    "Framer",
    "FramerStats",
    "Framing",
    "FramingConfig",
    "LengthPrefixedFraming",
    "LineFraming",
    "make_framer",
    "text_bytes",
]

_MAX_FRAME = Field(
    default=4096, ge=1, le=1024 * 1024, description="Longest frame kept; longer ones are dropped."
)


def text_bytes(text: str) -> bytes:
    r"""Bytes of a configured string: one byte per character (YAML "\x02" is byte 2)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError as exc:
        msg = f"{text!r}: only characters U+0000..U+00FF stand for bytes"
        raise ValueError(msg) from exc


class _Framing(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LineFraming(_Framing):
    """Text lines ended by a terminator."""

    type: Literal["line"] = "line"
    terminator: str = Field(default="\n", min_length=1, description="Ends every received line.")
    send_terminator: str | None = Field(
        default=None, description="Appended to sent frames; defaults to `terminator`."
    )
    strip: str = Field(
        default="\r", description="Characters stripped from both ends of a received line."
    )
    max_frame_bytes: int = _MAX_FRAME

    @model_validator(mode="after")
    def _bytes(self) -> LineFraming:
        text_bytes(self.terminator + (self.send_terminator or "") + self.strip)
        return self


class FixedFraming(_Framing):
    """Frames of one fixed length, optionally starting with a sync marker."""

    type: Literal["fixed"] = "fixed"
    length: int = Field(ge=1, le=65536, description="Bytes per frame, marker included.")
    start: str = Field(
        default="", description="Marker every frame begins with; bytes before it are skipped."
    )

    @model_validator(mode="after")
    def _fits(self) -> FixedFraming:
        if len(text_bytes(self.start)) >= self.length:
            raise ValueError("start marker must be shorter than length")
        return self


class LengthPrefixedFraming(_Framing):
    """A length field, then that many bytes (optionally after a start marker)."""

    type: Literal["length_prefixed"] = "length_prefixed"
    start: str = Field(default="", description="Marker before the length field, if any.")
    length_bytes: Literal[1, 2, 4] = Field(default=1, description="Size of the length field.")
    byteorder: Literal["big", "little"] = Field(default="big", description="Of the length field.")
    length_adjust: int = Field(
        default=0,
        ge=-8,
        le=8,
        description="Added to the length value to get the bytes after the field "
        "(e.g. +2 when a CRC follows the counted payload).",
    )
    max_frame_bytes: int = _MAX_FRAME

    @model_validator(mode="after")
    def _bytes(self) -> LengthPrefixedFraming:
        text_bytes(self.start)
        return self


class DelimitedFraming(_Framing):
    """Frames between a start and an end byte, with an escape byte for those inside."""

    type: Literal["delimited"] = "delimited"
    start: str = Field(default="\x02", min_length=1, max_length=1, description="Start byte.")
    end: str = Field(default="\x03", min_length=1, max_length=1, description="End byte.")
    escape: str | None = Field(
        default=None,
        min_length=1,
        max_length=1,
        description="Escape byte: the byte after it is taken literally (after escape_xor).",
    )
    escape_xor: int = Field(
        default=0, ge=0, le=255, description="XORed into an escaped byte (0x20 in HDLC style)."
    )
    max_frame_bytes: int = _MAX_FRAME

    @model_validator(mode="after")
    def _distinct(self) -> DelimitedFraming:
        specials = [self.start, self.end] + ([self.escape] if self.escape else [])
        text_bytes("".join(specials))
        if len(set(specials)) != len(specials):
            raise ValueError("start, end and escape must be different bytes")
        return self


Framing = Annotated[
    LineFraming | FixedFraming | LengthPrefixedFraming | DelimitedFraming,
    Field(discriminator="type"),
]


@dataclass(slots=True)
class FramerStats:
    """What a framer threw away, for diagnosing a noisy line.

    Attributes:
        garbage_bytes: bytes skipped while looking for the start of a frame.
        oversize: frames dropped because they grew past the maximum size.
    """

    garbage_bytes: int = 0
    oversize: int = 0


class Framer(Protocol):
    """Turns received chunks into frames and payloads into bytes to send."""

    stats: FramerStats

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the frames they complete, oldest first."""
        ...

    def encode(self, payload: bytes) -> bytes:
        """Wrap one payload for sending."""
        ...


FramingConfig = LineFraming | FixedFraming | LengthPrefixedFraming | DelimitedFraming


def make_framer(config: FramingConfig, stats: FramerStats | None = None) -> Framer:
    """The framer for a connection's framing settings, counting into `stats`."""
    match config:
        case LineFraming():
            return LineFramer(config, stats)
        case FixedFraming():
            return FixedFramer(config, stats)
        case LengthPrefixedFraming():
            return LengthPrefixedFramer(config, stats)
        case DelimitedFraming():
            return DelimitedFramer(config, stats)


class LineFramer:
    """Lines; an overlong line is dropped up to and including its terminator."""

    def __init__(self, config: LineFraming, stats: FramerStats | None = None) -> None:
        self.stats = stats or FramerStats()
        self._term = text_bytes(config.terminator)
        self._send = text_bytes(config.send_terminator or config.terminator)
        self._strip = text_bytes(config.strip)
        self._max = config.max_frame_bytes
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return complete lines without terminator."""
        self._buf += data
        frames: list[bytes] = []
        term = self._term
        start = 0
        while True:
            end = self._buf.find(term, start)
            if end < 0:
                break
            line = bytes(self._buf[start:end])
            start = end + len(term)
            if self._discarding:
                self._discarding = False
                self.stats.garbage_bytes += len(line) + len(term)
                continue
            if len(line) > self._max:
                self.stats.oversize += 1
                continue
            frames.append(line.strip(self._strip) if self._strip else line)
        del self._buf[:start]
        # Keep a possible partial terminator, drop the rest of an overlong line.
        keep = len(term) - 1
        if len(self._buf) > self._max + keep:
            dropped = len(self._buf) - keep
            if not self._discarding:
                self.stats.oversize += 1
            self.stats.garbage_bytes += dropped
            del self._buf[:dropped]
            self._discarding = True
        return frames

    def encode(self, payload: bytes) -> bytes:
        """Append the send terminator."""
        return payload + self._send


class FixedFramer:
    """Fixed-length frames; with a start marker, resynchronises on it."""

    def __init__(self, config: FixedFraming, stats: FramerStats | None = None) -> None:
        self.stats = stats or FramerStats()
        self._len = config.length
        self._start = text_bytes(config.start)
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return complete frames, marker included."""
        self._buf += data
        frames: list[bytes] = []
        while True:
            if self._start:
                _skip_to(self._buf, self._start, self.stats)
            if len(self._buf) < self._len:
                return frames
            frames.append(bytes(self._buf[: self._len]))
            del self._buf[: self._len]

    def encode(self, payload: bytes) -> bytes:
        """Send the payload as is: a fixed frame is whatever the template says."""
        return payload


class LengthPrefixedFramer:
    """Length-prefixed frames; an impossible length drops one byte and searches again."""

    def __init__(self, config: LengthPrefixedFraming, stats: FramerStats | None = None) -> None:
        self.stats = stats or FramerStats()
        self._start = text_bytes(config.start)
        self._size = config.length_bytes
        self._order: Literal["big", "little"] = config.byteorder
        self._adjust = config.length_adjust
        self._max = config.max_frame_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the bytes after each length field."""
        self._buf += data
        frames: list[bytes] = []
        head = len(self._start) + self._size
        while True:
            if self._start:
                _skip_to(self._buf, self._start, self.stats)
            if len(self._buf) < head:
                return frames
            count = int.from_bytes(self._buf[len(self._start) : head], self._order) + self._adjust
            if count < 0 or count > self._max:
                self.stats.oversize += 1
                self.stats.garbage_bytes += 1
                del self._buf[:1]
                continue
            if len(self._buf) < head + count:
                return frames
            frames.append(bytes(self._buf[head : head + count]))
            del self._buf[: head + count]

    def encode(self, payload: bytes) -> bytes:
        """Prefix the marker and the length of the payload."""
        count = len(payload) - self._adjust
        return self._start + count.to_bytes(self._size, self._order) + payload


class DelimitedFramer:
    """Start/end delimited frames with escaping; a stray start byte restarts the frame."""

    def __init__(self, config: DelimitedFraming, stats: FramerStats | None = None) -> None:
        self.stats = stats or FramerStats()
        self._start = ord(config.start)
        self._end = ord(config.end)
        self._esc = ord(config.escape) if config.escape else None
        self._xor = config.escape_xor
        self._max = config.max_frame_bytes
        self._frame: bytearray | None = None
        self._escaped = False
        self._oversize = False

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return unescaped frame contents without delimiters."""
        frames: list[bytes] = []
        for byte in data:
            frame = self._frame
            if frame is None:
                if byte == self._start:
                    self._begin()
                else:
                    self.stats.garbage_bytes += 1
            elif self._escaped:
                self._escaped = False
                self._append(frame, byte ^ self._xor)
            elif byte == self._esc:
                self._escaped = True
            elif byte == self._start:
                self.stats.garbage_bytes += len(frame)
                self._begin()
            elif byte == self._end:
                if self._oversize:
                    self.stats.oversize += 1
                else:
                    frames.append(bytes(frame))
                self._frame = None
            else:
                self._append(frame, byte)
        return frames

    def _begin(self) -> None:
        self._frame = bytearray()
        self._escaped = False
        self._oversize = False

    def _append(self, frame: bytearray, byte: int) -> None:
        if len(frame) >= self._max:
            if not self._oversize:
                self.stats.garbage_bytes += len(frame)
                frame.clear()
            self._oversize = True
            self.stats.garbage_bytes += 1
            return
        frame.append(byte)

    def encode(self, payload: bytes) -> bytes:
        """Delimit the payload, escaping delimiters and the escape byte inside it."""
        out = bytearray([self._start])
        specials = {self._start, self._end}
        if self._esc is not None:
            specials.add(self._esc)
        for byte in payload:
            if byte in specials:
                if self._esc is None:
                    msg = f"byte 0x{byte:02x} needs escaping but no escape byte is configured"
                    raise ValueError(msg)
                out += bytes([self._esc, byte ^ self._xor])
            else:
                out.append(byte)
        out.append(self._end)
        return bytes(out)


def _skip_to(buf: bytearray, marker: bytes, stats: FramerStats) -> None:
    """Drop bytes before the first (possibly partial) marker at the end of the buffer."""
    at = buf.find(marker)
    if at < 0:
        # Keep a tail that may be the beginning of a marker split across chunks.
        keep = 0
        for n in range(min(len(marker) - 1, len(buf)), 0, -1):
            if buf.endswith(marker[:n]):
                keep = n
                break
        at = len(buf) - keep
    if at:
        stats.garbage_bytes += at
        del buf[:at]
