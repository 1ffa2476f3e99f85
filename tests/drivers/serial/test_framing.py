"""Framers: any chunking gives the same frames; garbage and overlong frames are skipped."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.serial.framing import (
    DelimitedFraming,
    FixedFraming,
    Framer,
    LengthPrefixedFraming,
    LineFraming,
    make_framer,
)


def feed_in_chunks(framer: Framer, data: bytes, cuts: list[int]) -> list[bytes]:
    frames: list[bytes] = []
    at = 0
    for cut in sorted({min(c, len(data)) for c in cuts}):
        frames += framer.feed(data[at:cut])
        at = cut
    frames += framer.feed(data[at:])
    return frames


cuts = st.lists(st.integers(min_value=0, max_value=2000), max_size=30)
line_text = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


@given(lines=st.lists(line_text, max_size=20), cuts=cuts)
def test_lines_survive_any_chunking(lines, cuts):
    framer = make_framer(LineFraming(terminator="\r\n", strip=""))
    data = b"".join(line + b"\r\n" for line in lines)
    assert feed_in_chunks(framer, data, cuts) == lines


@given(lines=st.lists(line_text, min_size=1, max_size=5), junk=st.binary(min_size=101), cuts=cuts)
def test_an_overlong_line_is_dropped_and_the_next_lines_arrive(lines, junk, cuts):
    framer = make_framer(LineFraming(max_frame_bytes=100))
    junk = junk.replace(b"\n", b"")
    if len(junk) <= 100:
        junk = junk.ljust(101, b"x")
    data = junk + b"\n" + b"".join(line + b"\n" for line in lines)
    assert feed_in_chunks(framer, data, cuts) == lines
    assert framer.stats.oversize == 1


def test_a_64k_line_never_holds_more_than_the_maximum():
    framer = make_framer(LineFraming(max_frame_bytes=4096))
    for _ in range(64):
        assert framer.feed(b"y" * 1024) == []
    assert framer.feed(b"tail\nok\n") == [b"ok"]
    assert framer.stats.oversize == 1
    assert framer.stats.garbage_bytes == 64 * 1024 + len(b"tail\n")


def test_line_strip_and_send_terminator():
    framer = make_framer(LineFraming(terminator="\n", send_terminator="\r"))
    assert framer.feed(b"  a\r\n\rb\r\n") == [b"  a", b"b"]
    assert framer.encode(b"GO") == b"GO\r"


payloads = st.lists(st.binary(max_size=40), max_size=10)


@given(frames=payloads, cuts=cuts, junk=st.binary(max_size=30))
def test_delimited_frames_with_escapes_survive_garbage_and_chunking(frames, cuts, junk):
    config = DelimitedFraming(start="\x02", end="\x03", escape="\x10", escape_xor=0x20)
    framer = make_framer(config)
    junk = junk.replace(b"\x02", b"")  # garbage between frames holds no start byte
    data = b"".join(junk + framer.encode(frame) for frame in frames)
    assert feed_in_chunks(framer, data, cuts) == frames


def test_delimited_stray_start_restarts_and_oversize_is_dropped():
    framer = make_framer(DelimitedFraming(max_frame_bytes=4))
    assert framer.feed(b"\x02ab\x02cd\x03") == [b"cd"]
    assert framer.feed(b"\x02toolong\x03\x02ok\x03") == [b"ok"]
    assert framer.stats.oversize == 1


def test_delimited_encode_without_escape_refuses_a_delimiter_in_the_payload():
    framer = make_framer(DelimitedFraming())
    with pytest.raises(ValueError, match="escape"):
        framer.encode(b"a\x03b")


@given(frames=st.lists(st.binary(max_size=50), max_size=10), cuts=cuts)
def test_length_prefixed_frames_survive_chunking(frames, cuts):
    framer = make_framer(LengthPrefixedFraming(length_bytes=2, byteorder="little"))
    data = b"".join(framer.encode(frame) for frame in frames)
    assert feed_in_chunks(framer, data, cuts) == frames


@given(frames=st.lists(st.binary(min_size=1, max_size=20), max_size=8), junk=st.binary(max_size=20))
def test_length_prefixed_resynchronises_on_its_start_marker(frames, junk):
    framer = make_framer(LengthPrefixedFraming(start="\xaa\x55", max_frame_bytes=20))
    junk = junk.replace(b"\xaa", b"")
    data = junk + b"".join(framer.encode(frame) for frame in frames)
    assert framer.feed(data) == frames


def test_length_prefixed_impossible_length_is_skipped():
    framer = make_framer(LengthPrefixedFraming(start="\xaa", max_frame_bytes=8, length_adjust=1))
    # 0xaa 0xff: length 255+1 > 8, dropped; then a frame of 2+1 bytes (payload + a CRC byte)
    assert framer.feed(b"\xaa\xff\xaa\x02abc") == [b"abc"]
    assert framer.stats.oversize == 1
    assert framer.encode(b"abc") == b"\xaa\x02abc"


@given(frames=st.lists(st.binary(min_size=3, max_size=3), max_size=8), cuts=cuts)
def test_fixed_frames_with_a_start_marker(frames, cuts):
    framer = make_framer(FixedFraming(length=4, start="\x7e"))
    frames = [f.replace(b"\x7e", b"\x00") for f in frames]
    data = b"\x01\x02" + b"".join(b"\x7e" + frame for frame in frames)
    assert feed_in_chunks(framer, data, cuts) == [b"\x7e" + f for f in frames]
    assert framer.stats.garbage_bytes == 2


def test_fixed_frames_without_marker_are_plain_slices():
    framer = make_framer(FixedFraming(length=3))
    assert framer.feed(b"abcdefg") == [b"abc", b"def"]
    assert framer.feed(b"hi") == [b"ghi"]


def test_framing_settings_are_validated():
    with pytest.raises(ValueError, match="different"):
        DelimitedFraming(start="\x02", end="\x02")
    with pytest.raises(ValueError, match="shorter than length"):
        FixedFraming(length=1, start="ab")
    with pytest.raises(ValueError, match="U\\+00FF"):
        LineFraming(terminator="€")
