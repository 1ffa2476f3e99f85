"""Points -> the fewest read requests the limits allow. Pure, no I/O.

Points of one table are sorted by address and merged greedily: the next point joins the
current block when the unused addresses in between are at most `max_gap` and the block
stays within `max_block_registers` (or `max_block_bits` for coils and discrete inputs).
Greedy merging is optimal here: each block is as long as the limits allow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.modbus.config import ModbusDevice, ModbusPoint, Table

__all__ = ["Block", "plan_reads"]

_TABLE_ORDER: tuple[Table, ...] = ("holding", "input", "coil", "discrete")


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: `count` registers or bits of `table` from `start`."""

    table: Table
    start: int
    count: int
    points: tuple[ModbusPoint, ...]


def plan_reads(device: ModbusDevice, points: Sequence[ModbusPoint]) -> list[Block]:
    """Group points into read requests under the device's gap and size limits."""
    blocks: list[Block] = []
    for table in _TABLE_ORDER:
        mine = sorted((p for p in points if p.table == table), key=lambda p: p.address)
        if not mine:
            continue
        limit = device.max_block_bits if mine[0].is_bit_table else device.max_block_registers
        start = mine[0].address
        end = start + mine[0].span
        members = [mine[0]]
        for point in mine[1:]:
            new_end = max(end, point.address + point.span)
            if point.address - end <= device.max_gap and new_end - start <= limit:
                end = new_end
                members.append(point)
                continue
            blocks.append(Block(table, start, end - start, tuple(members)))
            start, end, members = point.address, point.address + point.span, [point]
        blocks.append(Block(table, start, end - start, tuple(members)))
    return blocks
