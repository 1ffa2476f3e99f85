"""`resync`: every child's status and reported shadow told to the cloud again.

It is what a connect does (children/status in full, then each device's reported values on
`config/update`), queued through the outbox so it keeps its place among what is buffered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from gatewayd.bridge.cloud_sync import CloudReports
from gatewayd.cloud.children import ChildStatus
from gatewayd.cloud.dialects import native
from gatewayd.store.outbox import Outbox
from gatewayd.store.shadows import ShadowStore

__all__ = ["Resync"]


class Resync:
    """Reports children status and reported shadows again.

    Args:
        gateway_id: the gateway (children/status goes under it).
        outbox: where children/status goes.
        statuses: every child's latest status.
        devices: the device ids to report (the gateway and its children).
        shadows: the reported shadows.
        reports: sends reported values on `config/update`.
    """

    def __init__(  # noqa: PLR0913, PLR0917 - every argument is an injected collaborator
        self,
        gateway_id: str,
        outbox: Outbox,
        statuses: Callable[[], Mapping[str, ChildStatus]],
        devices: Callable[[], Sequence[str]],
        shadows: ShadowStore,
        reports: CloudReports,
    ) -> None:
        self._gateway_id = gateway_id
        self._outbox = outbox
        self._statuses = statuses
        self._devices = devices
        self._shadows = shadows
        self._reports = reports

    async def __call__(self) -> int:
        """Report everything again; the number of devices whose shadow was reported."""
        statuses = self._statuses()
        if statuses:
            await self._outbox.append(
                self._gateway_id, "children/status", native.children_status(statuses)
            )
        count = 0
        for device_id in self._devices():
            services = await self._shadows.get(device_id)
            reported = [s for s in services if s.reported]
            for service in reported:
                values = {k: p.value for k, p in service.reported.items()}
                await self._reports.reported(device_id, service.service_id, values)
            count += bool(reported)
        return count
