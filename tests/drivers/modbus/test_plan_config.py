"""The read planner and the configuration model's checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.modbus.config import ModbusDevice, ModbusPoint, ModbusTcpConnection
from drivers.modbus.plan import plan_reads


def device(points: dict[str, dict[str, object]], **kw: object) -> ModbusDevice:
    return ModbusDevice.model_validate({"id": "d", "points": points, **kw})


def test_contiguous_registers_are_one_request():
    d = device({f"r{i}": {"address": 100 + i} for i in range(50)})
    (block,) = plan_reads(d, list(d.points.values()))
    assert (block.table, block.start, block.count, len(block.points)) == ("holding", 100, 50, 50)


def test_gaps_and_limits_split_requests():
    d = device(
        {"a": {"address": 0}, "b": {"address": 5, "type": "uint32"}, "c": {"address": 20}},
        max_gap=4,
    )
    blocks = plan_reads(d, list(d.points.values()))
    assert [(b.start, b.count) for b in blocks] == [(0, 7), (20, 1)]
    d = device({f"r{i}": {"address": i} for i in range(300)})
    blocks = plan_reads(d, list(d.points.values()))
    assert [(b.start, b.count) for b in blocks] == [(0, 125), (125, 125), (250, 50)]
    d = device({f"r{i}": {"address": i} for i in range(10)}, max_block_registers=4)
    assert [b.count for b in plan_reads(d, list(d.points.values()))] == [4, 4, 2]


def test_tables_are_planned_apart_and_bits_allow_2000():
    points = {f"c{i}": {"table": "coil", "address": i} for i in range(2500)}
    points |= {"h": {"address": 0}, "i": {"table": "input", "address": 0}}
    d = device(points)
    blocks = plan_reads(d, list(d.points.values()))
    assert [(b.table, b.start, b.count) for b in blocks] == [
        ("holding", 0, 1),
        ("input", 0, 1),
        ("coil", 0, 2000),
        ("coil", 2000, 500),
    ]


@given(
    st.lists(st.tuples(st.integers(0, 400), st.sampled_from(["uint16", "int32", "float64"]))),
    st.integers(0, 20),
    st.integers(4, 125),
)
def test_every_point_is_covered_within_the_limits(spec, max_gap, max_block):
    points = {f"p{i}": {"address": a, "type": t} for i, (a, t) in enumerate(spec)}
    d = device(points, max_gap=max_gap, max_block_registers=max_block)
    blocks = plan_reads(d, list(d.points.values()))
    covered = [p.id for b in blocks for p in b.points]
    assert sorted(covered) == sorted(points)
    for b in blocks:
        assert b.count <= max_block
        for p in b.points:
            assert b.start <= p.address
            assert p.address + p.span <= b.start + b.count


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"type": "bit"}, "needs `bit`"),
        ({"type": "string"}, "needs `length`"),
        ({"type": "uint16", "bit": 2}, "only for type bit"),
        ({"table": "coil", "type": "int16"}, "single bit"),
        ({"table": "input", "writable": True}, "read-only"),
        ({"address": 65535, "type": "uint32"}, "runs past"),
    ],
)
def test_inconsistent_points_are_refused(kw, message):
    with pytest.raises(ValidationError, match=message):
        ModbusPoint.model_validate({"id": "p", "address": 0, **kw})


def test_coils_default_to_bool_and_unknown_keys_are_refused():
    assert ModbusPoint.model_validate({"address": 1, "table": "coil"}).type == "bool"
    with pytest.raises(ValidationError, match="Extra inputs"):
        ModbusTcpConnection.model_validate({"driver": "modbus-tcp", "host": "h", "timeout": 3})
    with pytest.raises(ValidationError, match="exceed max_block_registers"):
        device({"s": {"address": 0, "type": "string", "length": 20}}, max_block_registers=10)
