"""Allow `python -m gatewayd`."""

from __future__ import annotations

import sys

from gatewayd.cli import main

sys.exit(main())
