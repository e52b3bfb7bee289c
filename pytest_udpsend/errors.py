"""Errors that name their cause and the fix in one sentence.

Every error a user can provoke (bad marker argument, unknown sysctl, missing
privilege, missing kernel feature) is one of these; the plugin turns them into a
collection error, a skip or a test failure with that sentence, never a traceback.
"""

from __future__ import annotations


class UdpsendError(Exception):
    """Base class: the message is the whole story (cause and fix)."""


class ConfigError(UdpsendError):
    """A marker, option or fixture argument is invalid."""


class InputError(ConfigError, ValueError):
    """A value given on the command line or in an option (labels, gate knobs, file names) cannot be used.

    Also a ValueError, so a parser that caught ValueError for these before still does; what
    reports errors to a person catches UdpsendError only, so a bug's ValueError keeps its traceback.
    """


class ResultsFileError(InputError):
    """A results file cannot be read, is not one, or cannot be used as asked (merged, compared)."""


class SysctlError(UdpsendError):
    """A sysctl could not be read or written (unknown, refused, read-only)."""


class PrivilegeError(UdpsendError):
    """The host lacks a privilege or kernel feature the test needs."""


class CommandError(UdpsendError):
    """A helper process failed; carries its exit code and output."""

    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"{argv[0]} exited with {returncode}\n--- stdout ---\n{stdout[-2000:]}\n--- stderr ---\n{stderr[-2000:]}"
        )
