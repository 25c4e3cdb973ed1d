"""The `circuits` process: what surrounds `circuits.cli.main.main` when it runs as a program
(`circuits ...` and `python -m circuits ...`), and only then (importing the CLI changes nothing).

- Ctrl-C at any moment ends with one line `interrupted` on stderr and status 130, never a
  traceback. During start-up (the imports of typer, pydantic, numpy, torch ...) there is nothing
  to clean up, and an interrupted import fails in odd ways (numpy turns it into a RecursionError),
  so the process leaves at once. Once the command runs, Ctrl-C raises KeyboardInterrupt as usual
  (temporary files are removed, servers say goodbye) and whatever exception it turns into ends as
  `interrupted` too. A second Ctrl-C leaves at once.
- Standard output that cannot be written (closed, a full device, a failing disk) is one line
  `error: ...` and status 2; a reader that closes the pipe early (`circuits models list | head -1`)
  ends the process quietly with status 141, as SIGPIPE would.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

from circuits.cli import interrupt
from circuits.cli.interrupt import INTERRUPTED, say, say_interrupted
from circuits.errors import CircuitsError

BROKEN_PIPE = 141  # 128 + SIGPIPE: the status of a process that the closed pipe would have ended


class StdoutError(CircuitsError):
    """Standard output refused a write (a full device, an I/O error)."""


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so that the flush at exit cannot fail a second time."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass


class GuardedStdout:
    """sys.stdout, whose failed writes become StdoutError (one error line) or, for a pipe the reader
    closed, a quiet exit 141. Everything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def _failed(self, err: OSError):
        _silence_stdout()
        if err.errno == errno.EPIPE:
            raise SystemExit(BROKEN_PIPE) from None
        raise StdoutError(f"cannot write to standard output: {err.strerror or err}") from None

    def write(self, text: str) -> int:
        if not text or not isinstance(text, str):
            return self._stream.write(text)  # click probes streams with b"" and "" (its own errors)
        try:
            return self._stream.write(text)
        except OSError as err:
            self._failed(err)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as err:
            self._failed(err)


def _stdout_closed() -> bool:
    if sys.stdout is None:
        return True
    try:
        os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return not hasattr(sys.stdout, "getvalue")  # an in-memory stream has no descriptor and is fine
    return False


def _final_flush() -> int | None:
    """Flush stdout before the interpreter does (whose failure would be an 'Exception ignored'
    message); the status to exit with if it failed."""
    try:
        sys.stdout.flush()
    except StdoutError as err:
        say(f"error: {err}")
        return 2
    except SystemExit as done:
        return done.code
    return None


def run() -> None:
    """The program: start-up under the leave-at-once Ctrl-C handler, then the command."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # e.g. `nohup` or a shell's `&`
    if not ignored:
        signal.signal(signal.SIGINT, interrupt.leave_at_once)
    if _stdout_closed():
        say("error: standard output is closed; redirect it to a file or /dev/null instead")
        sys.exit(2)
    sys.stdout = GuardedStdout(sys.stdout)
    from circuits.cli.main import main

    if not ignored:
        signal.signal(signal.SIGINT, interrupt.raise_interrupt)
    code: int | str | None = 0
    try:
        main()
    except SystemExit as done:
        code = done.code
    except StdoutError as err:  # met outside a command (e.g. `--help > /dev/full`)
        code = 2
        say(f"error: {err}")
    except BaseException as exc:
        # a KeyboardInterrupt is an interrupt even when some library had put Python's default SIGINT
        # handler back (then raise_interrupt did not count it): left uncaught, the interpreter would
        # end by SIGINT (status -2) after "interrupted" was said
        if not (interrupt.count or isinstance(exc, KeyboardInterrupt)):
            raise
        code = INTERRUPTED  # an import or a library turned the KeyboardInterrupt into another error
        say_interrupted()
    failed = _final_flush()
    status = failed if failed is not None and code in (0, None) else code
    if status == INTERRUPTED:
        _leave_interrupted()
    sys.exit(status)


def _leave_interrupted() -> None:
    """Exit 130 without the interpreter's own shutdown, which can still end an interrupted run by
    SIGINT (status -2) after the program asked for 130: measured, 1 in about 100 runs of `models
    predict` interrupted 2-3.6 s in, after the command's import of transformers. (CPython remembers
    a KeyboardInterrupt that passed through some of its entry points and re-raises SIGINT at exit.)
    The atexit functions still run: temporary files are removed."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, StdoutError, SystemExit):
            pass
    os._exit(INTERRUPTED)
