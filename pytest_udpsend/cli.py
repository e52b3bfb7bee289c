"""The ``udpsend`` console script (``pytest_udpsend.cli:main``): it only wires.

The subcommands, what they print and their exit statuses are in ``command/``.
"""

from __future__ import annotations

import sys

from pytest_udpsend.command.main import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
