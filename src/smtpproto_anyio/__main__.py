"""Run ``smtpproto-serve`` as ``python -m smtpproto_anyio``."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
