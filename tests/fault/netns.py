"""A network namespace joined to the root namespace by a veth pair, for link-down faults.

The daemon runs inside the namespace; the broker listens on the root side's veth address.
Taking the root side's end down is a cable pulled upstream: the namespace keeps its address
and route, and everything it sends is silently lost until the end comes back up. Names are
unique per run; `delete()` removes the namespace and both ends of the pair.
"""

from __future__ import annotations

import json
import random
import secrets
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.fault.daemon_setup import TOKEN, Daemon

__all__ = ["Namespace", "NetnsDaemon", "unavailable"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    probe = Namespace()
    try:
        probe.create()
    except FileNotFoundError:
        return "the `ip` command (iproute2) is not installed"
    except subprocess.CalledProcessError as exc:
        return f"`ip netns` is not permitted here: {exc.stderr.strip()}"
    finally:
        probe.delete()
    return None


class Namespace:
    """`gwt-<tag>` with the veth pair `gwh<tag>` (root side) / `gwn<tag>` (inside)."""

    def __init__(self) -> None:
        tag = secrets.token_hex(4)
        self.name = f"gwt-{tag}"
        self.host_if = f"gwh{tag}"
        self.ns_if = f"gwn{tag}"
        # A /30 of the benchmarking range (RFC 2544), on this machine only.
        net = random.Random(tag).randrange(0, 64) * 4
        self.host_addr = f"198.18.{net // 256}.{net % 256 + 1}"
        self.ns_addr = f"198.18.{net // 256}.{net % 256 + 2}"
        self._made = False

    def create(self) -> None:
        _ip("netns", "add", self.name)
        self._made = True
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.name)
        _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.name, "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if)
        _ip("-n", self.name, "link", "set", self.ns_if, "up")
        _ip("-n", self.name, "link", "set", "lo", "up")

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def down(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def up(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def delete(self) -> None:
        if not self._made:
            return
        for args in (("netns", "delete", self.name), ("link", "delete", self.host_if)):
            subprocess.run(["ip", *args], check=False, capture_output=True, timeout=10)
        self._made = False


class NetnsDaemon(Daemon):
    """The real daemon inside a namespace; its API is reached through the veth pair."""

    def __init__(self, ns: Namespace, config: Path, api_port: int, log: Path) -> None:
        super().__init__(config, api_port, log)
        self.ns = ns

    def command(self) -> list[str]:
        return [*self.ns.exec_prefix, *super().command()]

    def get(self, path: str) -> Any:
        url = f"http://{self.ns.ns_addr}:{self.api_port}{path}"
        request = urllib.request.Request(url, headers={"X-Auth-Token": TOKEN})
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.load(resp)
