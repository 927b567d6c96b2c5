"""One error family. Every expected failure carries a message, a hint and an exit code;
the CLI prints the first two on one line each and exits with the third."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes, documented in the README. Scripts may rely on them."""

    OK = 0
    TASK_FAILED = 1  # `wait`/`result`: the agent finished and reported failure
    BAD_INPUT = 2  # malformed argument (also Typer's own usage errors)
    ENVIRONMENT = 3  # Docker or compose v2 missing / not running / image build failed
    NOT_FOUND = 4  # no such session, recording or result
    TIMEOUT = 5  # `wait --timeout` ran out before a result
    SESSION_FAILED = 6  # the session broke: container died, no result will come
    CONFLICT = 7  # port taken, recording already running, nothing to stop...
    UNEXPECTED = 70  # a failure vncsess did not foresee (a bug): --debug shows the traceback


class VncsessError(Exception):
    exit_code: ExitCode = ExitCode.ENVIRONMENT

    def __init__(self, message: str, hint: str = "", exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class BadInput(VncsessError):
    exit_code = ExitCode.BAD_INPUT


class DockerUnavailable(VncsessError):
    exit_code = ExitCode.ENVIRONMENT


class BuildFailed(VncsessError):
    exit_code = ExitCode.ENVIRONMENT


class NotFound(VncsessError):
    exit_code = ExitCode.NOT_FOUND


class Conflict(VncsessError):
    exit_code = ExitCode.CONFLICT


class WaitTimeout(VncsessError):
    exit_code = ExitCode.TIMEOUT


class SessionFailed(VncsessError):
    exit_code = ExitCode.SESSION_FAILED
