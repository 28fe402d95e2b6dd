"""User-facing errors: one clear line and a non-zero exit, never a traceback.

Raise `UserError` for anything a user can cause (bad path, bad flag, mismatched
weights). Tools wrap their main in `reasonclip_jax.tools.cli.entry_point` (which adds the
shared logging set-up to `exit_on_user_error`); absl mains run under `cli.run_absl_main`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """An error caused by user input; its message is the whole explanation."""


def exit_on_user_error(main: F) -> F:
    """Decorator for CLI mains: a `UserError` prints `error: MESSAGE` and exits with 2."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
