"""Drains the outbox over one MQTT session: windowed, rate-limited, oldest first per device.

Each device has its own cursor, and every fetch takes a slice of every device that has records,
interleaved: live records of a device with no backlog go out beside another device's week-long
backlog instead of behind it, and within a device the order is the order of appends.

A record is acknowledged to the outbox only on a successful PUBACK; a refusal (reason code
>= 0x80) moves it to the dead letters. A record that keeps breaking the connection is found by
probing: after a session ends with records in flight, the next session sends one record alone
until its PUBACK arrives; a record that was alone in flight when the connection dropped
`poison_strikes` times in a row is a dead letter too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from itertools import zip_longest

from paho.mqtt.properties import Properties

from gatewayd.cloud.puback import PublishSeam, reason_name
from gatewayd.cloud.ratelimit import TokenBucket
from gatewayd.store.outbox import Outbox, Record

__all__ = ["Encoder", "Pump"]

log = logging.getLogger(__name__)

Encoder = Callable[[Record], tuple[str, bytes, Properties | None]]

# Rounds of the pump are at least this far apart: records sent in bursts.
GATHER_S = 0.010


class Pump:
    """Sends outbox records and settles them by PUBACK.

    Args:
        outbox: the source of records.
        encode: record -> (topic, payload, MQTT 5 properties) in the link's dialect.
        bucket: the cloud's rate limit.
        max_window: upper bound on messages in flight (the broker's Receive Maximum lowers it).
        per_device: records fetched per device per round.
        poison_strikes: drops of the connection, with a record alone in flight, that make it
            a dead letter.
        gather_s: the least time between two rounds of sending.
    """

    def __init__(  # noqa: PLR0913 - collaborators and bounds, all injected
        self,
        outbox: Outbox,
        encode: Encoder,
        bucket: TokenBucket,
        *,
        max_window: int = 1000,
        per_device: int = 200,
        poison_strikes: int = 3,
        gather_s: float | None = None,
    ) -> None:
        self._outbox = outbox
        self._encode = encode
        self._bucket = bucket
        self._max_window = max_window
        self._per_device = per_device
        self._poison_strikes = poison_strikes
        self._gather_s = GATHER_S if gather_s is None else gather_s
        self._probe = False
        self._strikes: dict[int, int] = {}
        self._in_flight: dict[int, Record] = {}
        self.sent = 0
        self.acked = 0
        self.window = 0  # in-flight bound of the current session

    async def run(self, seam: PublishSeam) -> None:
        """Send until cancelled (the session ends); never returns."""
        window = max(1, min(self._max_window, seam.connack.receive_maximum))
        self.window = window
        slots = asyncio.Semaphore(1 if self._probe else window)
        spare = window - 1 if self._probe else 0
        if self._probe:
            log.info("uplink: probing with one record in flight after a broken session")
        cursors: dict[str, int] = {}
        try:
            while True:
                self._outbox.changed.clear()
                batch = await self._outbox.fetch(cursors, self._per_device)
                if not batch:
                    await self._outbox.changed.wait()
                    await self._gather()
                    continue
                for record in _interleave(batch):
                    await slots.acquire()
                    if not self._bucket.try_take():
                        await self._bucket.take()
                    cursors[record.device] = record.id
                    if not self._send(seam, record, slots):
                        slots.release()
                    if spare and not self._probe:
                        for _ in range(spare):
                            slots.release()
                        spare = 0
                await self._gather()
        finally:
            self._session_ended()

    async def _gather(self) -> None:
        """Let new records gather for a moment before the next round.

        Records arrive one poll at a time. Rounds at most every `gather_s` send them in
        bursts: one wake of the pump and one socket write for several records, instead of
        one each.
        """
        if self._gather_s:
            await asyncio.sleep(self._gather_s)

    def _send(self, seam: PublishSeam, record: Record, slots: asyncio.Semaphore) -> bool:
        topic, payload, properties = self._encode(record)
        limit = seam.connack.maximum_packet_size
        if limit is not None and len(payload) + len(topic) + 16 > limit:
            self._outbox.dead_letter(
                record.id, 0x95, f"{len(payload)} bytes exceed the broker's maximum packet size"
            )
            return False
        try:
            future = seam.publish(topic, payload, properties)
        except ValueError as exc:  # no topic can carry it (a record from an older store)
            self._outbox.dead_letter(record.id, None, str(exc))
            return False
        self._in_flight[record.id] = record
        self.sent += 1
        future.add_done_callback(lambda f: self._settled(record, slots, f))
        return True

    def _settled(
        self, record: Record, slots: asyncio.Semaphore, future: asyncio.Future[int]
    ) -> None:
        slots.release()
        self._in_flight.pop(record.id, None)
        if future.cancelled() or future.exception() is not None:
            return  # the session ended; the record is sent again from the oldest unacked
        code = future.result()
        self._strikes.pop(record.id, None)
        if code < 0x80:
            self.acked += 1
            self._probe = False
            self._outbox.ack(record.id)
        else:
            self._outbox.dead_letter(record.id, code, f"broker refused: {reason_name(code)}")

    def _session_ended(self) -> None:
        if not self._in_flight:
            return
        if self._probe and len(self._in_flight) == 1:
            (record,) = self._in_flight.values()
            strikes = self._strikes.get(record.id, 0) + 1
            self._strikes[record.id] = strikes
            if strikes >= self._poison_strikes:
                self._strikes.pop(record.id)
                self._outbox.dead_letter(
                    record.id, None, f"the connection dropped {strikes} times while it was sent"
                )
        self._probe = True
        self._in_flight.clear()


def _interleave(batch: Sequence[Record]) -> Iterator[Record]:
    """Round-robin across devices, keeping each device's order."""
    lanes: dict[str, list[Record]] = {}
    for record in batch:
        lanes.setdefault(record.device, []).append(record)
    for row in zip_longest(*lanes.values()):
        yield from (r for r in row if r is not None)
