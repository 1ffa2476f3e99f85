"""Logging set-up: structured journald fields under systemd, plain lines elsewhere."""

from __future__ import annotations

import logging
import sys

from gatewayd import systemd
from gatewayd.settings import LoggingConfig

__all__ = ["setup_logging"]

_PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_IN_JOURNAL = "%(levelname)s %(name)s: %(message)s"


def setup_logging(config: LoggingConfig | None = None) -> None:
    """Route logs to journald when stderr is the journal, else to stderr as plain lines."""
    level = config.level if config else "INFO"
    mode = config.journal if config else "auto"
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    journal: logging.Handler | None = None
    if mode == "yes" or (mode == "auto" and systemd.stderr_is_journal()):
        journal = systemd.journal_handler()
    if journal is not None:
        root.addHandler(journal)
    else:
        plain = logging.StreamHandler(sys.stderr)
        fmt = _IN_JOURNAL if systemd.stderr_is_journal() else _PLAIN
        plain.setFormatter(logging.Formatter(fmt))
        root.addHandler(plain)
    root.setLevel(level)
