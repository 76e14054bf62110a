"""The one error class a user can act on.

A :class:`UserError`'s message is a single line saying what went wrong and what to do. The ``ser``
command and ``train.py`` print it as ``error: <message>`` and exit with status 1, without a
traceback; any other exception is a defect and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class UserError(Exception):
    """Bad input or a missing resource that the user can fix; the message is the whole report."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its class name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Report a :class:`UserError` as ``error: <first line>`` on stderr and exit with status 1.

    The ``ser`` command and ``train.py`` run inside it; any other exception keeps its traceback.
    """
    try:
        yield
    except UserError as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        raise SystemExit(1) from None
