"""The one place vncsess runs another program (docker, debootstrap, pip, tar). A failure
leaves here as a VncsessError: a missing program, a non-zero exit (explained by the caller's
`explain`, which knows that program's words), or a time limit."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence

from vncsess.errors import VncsessError

Explain = Callable[[str, int, str], VncsessError]


def last_line(output: str) -> str:
    return next((ln.strip() for ln in reversed(output.strip().splitlines()) if ln.strip()), "")


def explained(kind: type[VncsessError] = VncsessError, hint: str = "") -> Explain:
    """An explanation from the program's last words (or its exit code), as KIND."""

    def explain(output: str, returncode: int, doing: str) -> VncsessError:
        words = last_line(output) or f"exit status {returncode}"
        return kind(f"{doing} failed: {words}", hint=hint)

    return explain


plain_explain = explained()


def which(program: str, missing: Callable[[], VncsessError]) -> str:
    path = shutil.which(program)
    if path is None:
        raise missing()
    return path


def result(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run and return the completed process whatever its exit code (the caller decides);
    raises only when the program cannot be started or runs out of time."""
    try:
        return subprocess.run(
            list(argv), input=input, capture_output=True, env=env, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise VncsessError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise VncsessError(f"{argv[0]} did not finish within {timeout:g} s") from None


def run(
    argv: Sequence[str],
    doing: str,
    *,
    explain: Explain = plain_explain,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> str:
    """Run to completion; stdout as text, or the caller's explanation of the failure."""
    proc = result(argv, input=input, env=env, timeout=timeout)
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise explain(proc.stderr.decode(errors="replace") + out, proc.returncode, doing)
    return out


def stream(
    argv: Sequence[str],
    doing: str,
    *,
    explain: Explain = plain_explain,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Yield the program's output lines (stdout and stderr merged) as they come; a failure
    is explained from its last lines."""
    tail: list[str] = []
    try:
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            text=True, errors="replace",
        )  # fmt: skip
    except FileNotFoundError:
        raise VncsessError(f"{argv[0]} is not installed") from None
    with proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            tail = [*tail[-19:], line]
            yield line
    if proc.returncode != 0:
        raise explain("\n".join(tail), proc.returncode, doing)


class Lines(Iterator[str]):
    """A long-running program's output lines as they come (`logs --follow`, `events`).

    `close()` may be called from any thread and ends the program, which also ends a reader
    blocked on the next line: a server must be able to drop a follower whose client left,
    which a generator blocked in another thread cannot do. A failure is explained when the
    output ends; an end by a signal (ours, or a Ctrl-C that reached the program) is none."""

    def __init__(self, argv: Sequence[str], doing: str, *, explain: Explain = plain_explain):
        self._doing, self._explain, self._closed = doing, explain, False
        try:
            self._proc = subprocess.Popen(
                list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, errors="replace",
            )  # fmt: skip
        except FileNotFoundError:
            raise VncsessError(f"{argv[0]} is not installed") from None

    def __next__(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line:
            return line.rstrip("\n")
        err = self._proc.stderr.read() if self._proc.stderr else ""
        rc = self._proc.wait()
        if rc not in (0, -2, -15, 130, 143) and not self._closed:
            raise self._explain(err, rc, self._doing)
        raise StopIteration

    def close(self) -> None:
        self._closed = True
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()
