"""Ctrl-C's one line: `interrupted` (said once, however many layers see the interrupt) and status
130, and the two SIGINT handlers of the `circuits` program (circuits/cli/entry.py installs them)."""

from __future__ import annotations

import os

INTERRUPTED = 130
count = 0  # SIGINTs seen since the command started
_said_interrupted = False


def say(line: str) -> None:
    """Write one line to stderr with a raw write: safe inside a signal handler, never raises."""
    try:
        os.write(2, (line + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def say_interrupted() -> None:
    """The one line of an interrupted run (said once, however many layers see the interrupt)."""
    global _said_interrupted
    if not _said_interrupted:
        _said_interrupted = True
        say("interrupted")


def leave_at_once(signum=None, frame=None) -> None:
    say_interrupted()
    os._exit(INTERRUPTED)


def raise_interrupt(signum, frame) -> None:
    global count
    count += 1
    if count > 1:
        leave_at_once()
    raise KeyboardInterrupt
