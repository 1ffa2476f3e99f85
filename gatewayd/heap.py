"""The garbage collector's share of a long-running daemon, kept small once start-up is over.

Almost everything the daemon allocates per reading is freed by reference counting the
moment it is done with, yet Python's cyclic collector still runs every few hundred
allocations, and each of its full passes walks every object alive: the imported libraries,
the configuration, the registry, tens of megabytes that live as long as the process. Once
the daemon is ready, one collection followed by `gc.freeze()` moves all of that out of the
collector's sight for good. Cycles made later are still found and freed.
"""

from __future__ import annotations

import gc

__all__ = ["settle"]


def settle() -> None:
    """Collect once, then keep every object alive now out of all later collections."""
    gc.collect()
    gc.freeze()
