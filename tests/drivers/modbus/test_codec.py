"""Every type and order round-trips; fixed vectors pin the layouts."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.codec import CodecError, decode, encode
from drivers.modbus.config import ModbusPoint

ORDERS = st.sampled_from(["big", "little"])
RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def point(**kw: object) -> ModbusPoint:
    return ModbusPoint.model_validate({"id": "p", "address": 0, **kw})


@given(st.data(), st.sampled_from(sorted(RANGES)), ORDERS, ORDERS)
def test_integers_round_trip(data, kind, byte_order, word_order):
    low, high = RANGES[kind]
    value = data.draw(st.integers(low, high))
    p = point(type=kind, byte_order=byte_order, word_order=word_order)
    regs = encode(p, value)
    assert len(regs) == p.span
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode(p, regs) == value


@given(st.floats(width=32, allow_nan=False), ORDERS, ORDERS)
def test_float32_round_trips(value, byte_order, word_order):
    p = point(type="float32", byte_order=byte_order, word_order=word_order)
    assert decode(p, encode(p, value)) == value


@given(st.floats(allow_nan=False), ORDERS, ORDERS)
def test_float64_round_trips(value, byte_order, word_order):
    p = point(type="float64", byte_order=byte_order, word_order=word_order)
    assert decode(p, encode(p, value)) == value


@given(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=8), ORDERS)
def test_strings_round_trip(text, byte_order):
    p = point(type="string", length=4, byte_order=byte_order)
    assert decode(p, encode(p, text.rstrip(" "))) == text.rstrip(" ")


@given(st.integers(0, 15), st.integers(0, 0xFFFF), st.booleans())
def test_bit_write_changes_only_its_bit(bit, current, flag):
    p = point(type="bit", bit=bit)
    (reg,) = encode(p, flag, current)
    assert decode(p, [reg]) is flag
    assert reg & ~(1 << bit) == current & ~(1 << bit)


@pytest.mark.parametrize(
    ("byte_order", "word_order", "registers"),
    [
        ("big", "big", [0x3F80, 0x0000]),  # ABCD
        ("big", "little", [0x0000, 0x3F80]),  # CDAB
        ("little", "big", [0x803F, 0x0000]),  # BADC
        ("little", "little", [0x0000, 0x803F]),  # DCBA
    ],
)
def test_float32_layouts(byte_order, word_order, registers):
    p = point(type="float32", byte_order=byte_order, word_order=word_order)
    assert encode(p, 1.0) == registers
    assert decode(p, registers) == 1.0


def test_known_vectors():
    assert decode(point(type="int16"), [0xFFFF]) == -1
    assert decode(point(type="uint32"), [0x0001, 0x0002]) == 0x00010002
    assert decode(point(type="uint32", word_order="little"), [0x0002, 0x0001]) == 0x00010002
    assert decode(point(type="string", length=3), [0x4142, 0x4300, 0x5858]) == "ABC"
    assert decode(point(type="string", length=2, byte_order="little"), [0x4241, 0x0043]) == "ABC"
    assert decode(point(type="bool"), [2]) is True
    raw = struct.unpack(">4H", struct.pack(">d", -2.5))
    assert decode(point(type="float64"), list(raw)) == -2.5
    assert math.isnan(decode(point(type="float32"), [0x7FC0, 0]))  # type: ignore[arg-type]


def test_floats_round_to_integer_types():
    assert encode(point(type="int16"), 41.6) == [42]
    assert encode(point(type="int16"), -0.4) == [0]


@pytest.mark.parametrize(
    ("kw", "value", "message"),
    [
        ({"type": "uint16"}, -1, "outside uint16"),
        ({"type": "int16"}, 40000, "outside int16"),
        ({"type": "int32"}, "12", "expected a number"),
        ({"type": "int32"}, True, "expected a number"),
        ({"type": "uint16"}, math.inf, "not a finite number"),
        ({"type": "float32"}, 1e39, "does not fit float32"),
        ({"type": "string", "length": 1}, "abc", "do not fit"),
        ({"type": "string", "length": 1}, 5, "expected a string"),
        ({"type": "bool"}, 2, "expected a bool"),
    ],
)
def test_values_that_do_not_fit_are_refused(kw, value, message):
    with pytest.raises(CodecError, match=message):
        encode(point(**kw), value)


@given(
    st.sampled_from([*sorted(RANGES), "float32", "float64", "bool", "string", "bit"]),
    ORDERS,
    ORDERS,
    st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4),
)
def test_any_register_content_decodes_without_raising(kind, byte_order, word_order, regs):
    extra = {"bit": {"bit": 5}, "string": {"length": 4}}.get(kind, {})
    p = point(type=kind, byte_order=byte_order, word_order=word_order, **extra)
    value = decode(p, regs[: p.span])
    assert isinstance(value, bool | int | float | str)
