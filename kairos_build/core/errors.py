"""Error classes: each carries an exit code and a hint telling the user what to do."""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_BUILD_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CHECK_FAILED = 3
EXIT_MISSING_TOOL = 4


class KairosError(Exception):
    """A failure we understand: printed as one line (plus a hint), never as a traceback."""

    exit_code = EXIT_BUILD_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class BuildError(KairosError):
    """A stage failed while working on valid input (a tool failed, the disk filled up)."""


class InputError(KairosError):
    """The user's input is wrong: unknown flavor, unreadable base, bad option value."""

    exit_code = EXIT_BAD_INPUT


def require_root(what: str) -> None:
    """Stop early, with the fix, when a step needs privileges we do not have."""
    if os.geteuid() != 0:
        raise InputError(
            f"{what} needs root (namespaces, file ownership)", hint="run kairos-build as root, e.g. with sudo"
        )


class HostileContentError(InputError):
    """The image tried something that would write outside its root; we refuse it."""


class CheckFailedError(KairosError):
    """A requirement check failed for the requested boot mode."""

    exit_code = EXIT_CHECK_FAILED


class MissingToolError(KairosError):
    """A host program we drive is not installed."""

    exit_code = EXIT_MISSING_TOOL
