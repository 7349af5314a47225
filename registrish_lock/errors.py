"""The exception tree and the exit codes the CLI maps it to.

Every error a user can cause or meet is a `RegistrishError`: the CLI prints
`error: <message>` (and `hint: <hint>` when there is one) and exits with
`exit_code`, never with a traceback unless `--debug` is given.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented process exit codes (README, "Exit codes")."""

    OK = 0
    #: `--dry-run`/`--check`/`check`: changes pending, lock stale, or a check failed.
    PENDING = 1
    #: Bad input: config, lock, command line, names, digests.
    USAGE = 2
    #: An upstream registry failed: unreachable, auth refused, not found, bad answers.
    UPSTREAM = 3
    #: Content did not match its digest or size (upstream or on disk).
    INTEGRITY = 4
    #: Another registrish process holds the tree's lock (`--no-wait`).
    BUSY = 5
    #: A local I/O problem (disk full, permissions) or a server that could not start.
    LOCAL = 6
    INTERRUPTED = 130


class RegistrishError(Exception):
    """Base of every error reported to the user as one line."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(RegistrishError):
    """`registrish.toml` is malformed or invalid."""

    def __init__(
        self, path: object, key: str | None, problem: str, *, hint: str | None = None
    ) -> None:
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + problem, hint=hint)
        self.path = str(path)
        self.key = key


class LockfileError(RegistrishError):
    """`registrish.lock` is malformed, of another format version, or inconsistent."""


class StaleLockError(RegistrishError):
    """The lock does not match the config it was made from."""

    exit_code = ExitCode.PENDING


class ReferenceError_(RegistrishError):
    """A repository name, tag, digest or image reference is invalid."""


class UpstreamError(RegistrishError):
    """An upstream registry could not be reached or answered wrongly."""

    exit_code = ExitCode.UPSTREAM


class AuthError(UpstreamError):
    """The upstream refused our credentials, or wants some we do not have."""


class NotFoundError(UpstreamError):
    """The upstream has no such repository, tag or object."""


class IntegrityError(RegistrishError):
    """Bytes did not match their digest or declared size."""

    exit_code = ExitCode.INTEGRITY


class BusyError(RegistrishError):
    """Another process holds the tree's lock file."""

    exit_code = ExitCode.BUSY


class LocalError(RegistrishError):
    """A local filesystem or server problem."""

    exit_code = ExitCode.LOCAL
