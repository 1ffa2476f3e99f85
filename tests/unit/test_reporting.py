"""The reporting policy: on change with deadbands, heartbeat, quality; time is injected."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from drivers.memory import MemoryPoint
from gatewayd.bridge.reporting import ReportPolicy, ReportRule
from gatewayd.model import PointRef, Quality, Reading

AT = datetime(2026, 1, 1, tzinfo=UTC)


def reading(value, quality=Quality.GOOD, point="t"):
    return Reading(PointRef("c", "d", point), value, None, AT, quality)


def test_first_value_then_only_changes():
    p, rule = ReportPolicy(), ReportRule()
    assert p.accept(reading(1.0), rule, 0)
    assert not p.accept(reading(1.0), rule, 1)
    assert p.accept(reading(1.5), rule, 2)
    assert p.accept(reading("on"), rule, 3)
    assert not p.accept(reading("on"), rule, 4)
    assert p.accept(reading(True), rule, 5)
    assert p.accept(reading(1), rule, 6)  # bool -> int is a change of kind


def test_absolute_deadband_measures_from_the_last_reported_value():
    p, rule = ReportPolicy(), ReportRule(deadband=0.5)
    assert p.accept(reading(20.0), rule, 0)
    assert not p.accept(reading(20.3), rule, 1)
    assert not p.accept(reading(20.4), rule, 2)  # drift is measured from 20.0, not 20.3
    assert p.accept(reading(20.5), rule, 3)
    assert not p.accept(reading(20.1), rule, 4)
    assert p.accept(reading(19.9), rule, 5)


def test_percent_deadband():
    p, rule = ReportPolicy(), ReportRule(deadband_percent=10)
    assert p.accept(reading(200), rule, 0)
    assert not p.accept(reading(219), rule, 1)
    assert p.accept(reading(180), rule, 2)


def test_heartbeat_repeats_unchanged_values():
    p, rule = ReportPolicy(), ReportRule(deadband=1, heartbeat_s=60)
    assert p.accept(reading(5), rule, 0)
    assert not p.accept(reading(5.5), rule, 59.9)
    assert p.accept(reading(5.5), rule, 60)
    assert not p.accept(reading(5.5), rule, 100)
    assert p.accept(reading(5.5), rule, 120)


def test_quality_change_is_always_reported():
    p, rule = ReportPolicy(), ReportRule(deadband=100)
    assert p.accept(reading(1.0), rule, 0)
    assert p.accept(reading(1.0, Quality.BAD), rule, 1)
    assert not p.accept(reading(1.0, Quality.BAD), rule, 2)
    assert p.accept(reading(1.0), rule, 3)
    assert p.accept(reading(math.nan), ReportRule(), 4)
    assert not p.accept(reading(math.nan), ReportRule(), 5)


def test_points_are_independent_and_forget_resets():
    p, rule = ReportPolicy(), ReportRule()
    assert p.accept(reading(1, point="a"), rule, 0)
    assert p.accept(reading(1, point="b"), rule, 0)
    p.forget("c/d/a")
    assert p.accept(reading(1, point="a"), rule, 1)


def test_rule_from_point_config():
    point = MemoryPoint(deadband=0.2, deadband_percent=1, heartbeat_s=300)
    assert ReportRule.for_point(point) == ReportRule(0.2, 1.0, 300.0)
    assert ReportRule.for_point(MemoryPoint()) == ReportRule()
