"""`GET /metrics`: Prometheus text exposition of what an operator alerts on.

Component states, the outbox (depth, bytes, oldest age, dead letters, drops by reason and
device) and the uplink's connects. Values are read when scraped; nothing is kept in between.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiohttp import web

from gatewayd.api.openapi import Operation, add_route
from gatewayd.health import Health, State
from gatewayd.store.outbox import Outbox

__all__ = ["mount_metrics", "render"]

_OUTBOX_KEY = web.AppKey("metrics.outbox", Outbox)
_HEALTH_KEY = web.AppKey("metrics.health", Health)
_CONNECTS_KEY = web.AppKey("metrics.connects", object)

_OP = Operation(
    "Prometheus metrics: components, outbox depth and drops, uplink connects",
    "read",
    "operations",
    responses={200: "text/plain; version=0.0.4"},
)


def mount_metrics(
    app: web.Application, health: Health, outbox: Outbox, connects: object = None
) -> None:
    """Add `/metrics`; `connects` is anything with a `connects` attribute (the uplink)."""
    app[_HEALTH_KEY] = health
    app[_OUTBOX_KEY] = outbox
    app[_CONNECTS_KEY] = connects
    add_route(app, "GET", "/metrics", _metrics, _OP)


async def _metrics(request: web.Request) -> web.Response:
    app = request.app
    text = await render(app[_HEALTH_KEY], app[_OUTBOX_KEY], app[_CONNECTS_KEY])
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})  # fmt: skip


async def render(health: Health, outbox: Outbox, uplink: object = None) -> str:
    """The exposition text."""
    stats = await outbox.stats()
    lines: list[str] = []
    _family(lines, "gatewayd_component_up", "gauge", "1 when the component works",
            ((f'component="{_esc(c.name)}"', int(c.state is State.UP))
             for c in health.components()))  # fmt: skip
    _family(lines, "gatewayd_outbox_records", "gauge", "records waiting for the broker",
            [("", stats.records)])  # fmt: skip
    _family(lines, "gatewayd_outbox_bytes", "gauge", "payload bytes waiting", [("", stats.bytes)])
    _family(lines, "gatewayd_outbox_oldest_age_seconds", "gauge",
            "age of the oldest waiting record", [("", stats.oldest_age_s or 0.0)])  # fmt: skip
    _family(lines, "gatewayd_outbox_dead_letters", "gauge", "records the broker refused",
            [("", stats.dead_letters)])  # fmt: skip
    _family(lines, "gatewayd_outbox_unwritten_total", "counter",
            "records the broker acknowledged before they were written (never on disk)",
            [("", outbox.unwritten)])  # fmt: skip
    _outbox_storage(lines, outbox)
    _family(lines, "gatewayd_outbox_drops_total", "counter", "records dropped, by reason",
            ((f'reason="{_esc(reason)}",device="{_esc(device)}"', n)
             for reason, by_device in sorted(stats.drops.items())
             for device, n in sorted(by_device.items())))  # fmt: skip
    connects = getattr(uplink, "connects", None)
    if isinstance(connects, int):
        _family(lines, "gatewayd_uplink_connects_total", "counter",
                "MQTT sessions established", [("", connects)])  # fmt: skip
    downlinks = getattr(uplink, "downlinks", None)
    if isinstance(downlinks, Mapping):
        _family(lines, "gatewayd_downlinks_total", "counter",
                "downlinks received, by result: ok, invalid (refused by validation), failed",
                ((f'result="{_esc(str(r))}"', n) for r, n in downlinks.items()))  # fmt: skip
    return "\n".join(lines) + "\n"


def _outbox_storage(lines: list[str], outbox: Outbox) -> None:
    """Records held in memory (the disk takes none), and what a damaged file gave back."""
    _family(lines, "gatewayd_outbox_held_records", "gauge",
            "records appended and not written (held back, or held while the disk takes none)",
            [("", outbox.held)])  # fmt: skip
    _family(lines, "gatewayd_outbox_disk_refused", "gauge",
            "1 while new records are held in memory, by why (disk_floor, disk_full)",
            [(f'reason="{r}"', int(outbox.holding == r))
             for r in ("disk_floor", "disk_full")])  # fmt: skip
    salvaged = outbox.salvage
    lost = (-1 if salvaged.lost is None else salvaged.lost) if salvaged else 0
    _family(lines, "gatewayd_outbox_salvaged_records", "gauge",
            "records copied from a damaged outbox file at this start",
            [("", salvaged.records if salvaged else 0)])  # fmt: skip
    _family(lines, "gatewayd_outbox_salvage_lost_records", "gauge",
            "records of a damaged outbox file that could not be read (-1: unknown)",
            [("", lost)])  # fmt: skip


def _family(
    lines: list[str], name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]
) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        lines.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
