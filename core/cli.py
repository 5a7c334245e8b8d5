"""One error policy for every command line: user mistakes are one ``error:`` line, bugs keep their traceback.

Each CLI hands :func:`run_command` the exception *types* its users can cause (bad recipes, missing or
unreadable files, corrupt shards or exports). Those are printed as ``error: MESSAGE`` with exit status 2;
anything else propagates with its traceback, because it is a bug to be reported. Matching is by type only,
never by class name. Torch-free, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

EXIT_USER = 2
EXIT_INTERRUPTED = 130

# Failures of the user's input that the standard library raises with a message naming the path.
OS_USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError,
)


class UsageError(ValueError):
    """A command-line value that parsed but cannot be used (e.g. a window shorter than one patch)."""


def fail(message: str, status: int = EXIT_USER) -> NoReturn:
    """Print ``error: message`` (one line) on stderr and exit with ``status``."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(status)


def describe(err: BaseException) -> str:
    """One line for a user error: an OSError gets its path and reason, others their message."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return str(err) or type(err).__name__


def run_command(func: Callable[[argparse.Namespace], Any], args: argparse.Namespace,
                user_errors: Callable[[], tuple[type[BaseException], ...]]) -> Any:
    """Run a subcommand. Exceptions of the types ``user_errors()`` returns (called only after a failure, so
    that a CLI imports its heavy modules only when it needs them) and of :data:`OS_USER_ERRORS` become one
    ``error:`` line with exit status 2; any other exception keeps its traceback."""
    try:
        return func(args)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:  # output piped into e.g. `head`, which exited: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    except Exception as err:
        if isinstance(err, user_errors() + OS_USER_ERRORS):
            fail(describe(err))
        raise


def _number(kind: type, low: float, inclusive: bool) -> Callable[[str], Any]:
    """An argparse ``type`` accepting a finite ``kind`` number >= ``low`` (> ``low`` unless inclusive)."""
    relation = ">=" if inclusive else ">"
    noun = "a whole number" if kind is int else "a finite number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun} {relation} {low:g}, got {text!r}") from None
        ok = (value >= low if inclusive else value > low) and math.isfinite(value)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {noun} {relation} {low:g}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__} {relation} {low:g}"  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, True)
non_negative_int = _number(int, 0, True)
positive_float = _number(float, 0, False)
