"""What every command line of the project shares: refusals as one line on stderr with exit status 2."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def usage_errors():
    """A CLI's refusal (`SystemExit` with a message) as one line on stderr and exit status 2, as for a bad flag."""
    try:
        yield
    except SystemExit as err:
        if isinstance(err.code, str):
            print(f"error: {err.code}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
