from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.drivers.serial.ptys import PtyPair


@pytest.fixture
async def pty_pair(tmp_path) -> AsyncIterator[PtyPair]:
    pair = PtyPair(tmp_path)
    await pair.start()
    try:
        yield pair
    finally:
        pair.kill()
