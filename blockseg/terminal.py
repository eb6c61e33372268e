"""What a run shows on the terminal: one line per stage, a progress bar only on a terminal.

The run's narrative (one summary line per stage, the cluster, where the
outputs are) goes to stdout through :class:`BarAwareHandler`, warnings and
errors to stderr. A progress bar (:func:`progress_bar`) is drawn on stderr
only when stderr is a terminal, and it is cleared when its stage ends, so
that the stage's summary line is what stays on the screen, once. When the
output goes to a file or a pipe there are no bars at all: plain lines only.

When the reader of stdout goes away (``blockseg status CONFIG | head -1``)
the command ends quietly, as a Unix tool does on SIGPIPE:
:func:`stdout_reader_gone` tells that broken pipe from any other, and
:func:`silence_stdout` points stdout at the null device so that nothing
written after it (the interpreter's final flush included) raises again.

Examples
--------
>>> bar = progress_bar(total=3, initial=1, desc="fragments", enabled=True)
>>> bar.disable  # under doctest stderr is not a terminal: no bar, no escape codes
True
>>> bar.close()
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
from typing import IO

from tqdm import tqdm

#: Console verbosity chosen on the command line: ``--quiet``, the default, ``--verbose``.
QUIET, NORMAL, VERBOSE = logging.WARNING, logging.INFO, logging.DEBUG

#: True once :func:`silence_stdout` has pointed stdout at the null device.
_stdout_silenced = False


def is_terminal(stream: IO | None) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes and closed streams)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (ValueError, AttributeError):  # a closed or replaced stream
        return False


def progress_bar(total: int, initial: int = 0, desc: str = "", enabled: bool = True) -> tqdm:
    """A progress bar of blocks on stderr, drawn only when ``enabled`` and stderr is a terminal.

    Parameters
    ----------
    total : int
        Blocks of the stage.
    initial : int
        Blocks already done (resumed).
    desc : str
        The stage name, shown before the bar.
    enabled : bool
        False for ``scheduler.progress: false``, ``--no-progress`` or ``--quiet``.

    Returns
    -------
    tqdm.tqdm
        A bar that leaves nothing behind when closed: the stage's summary
        line, logged next, is the one line that stays.
    """
    stream = sys.stderr
    return tqdm(
        total=total, initial=initial, desc=desc, unit="block", file=stream,
        disable=not (enabled and is_terminal(stream)), leave=False, dynamic_ncols=True,
    )


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reading end has been closed.

    A ``BrokenPipeError`` can come from any pipe or socket; only one raised
    because stdout's reader went away (``| head -1`` after its line) is the
    quiet end of a command. Linux and macOS report such a pipe as
    ``POLLERR`` (a socket as ``POLLHUP``).

    Returns
    -------
    bool
        True once :func:`silence_stdout` has run, or when polling stdout
        says its reader is gone; False for a terminal, a file, an open pipe,
        or a stdout without a file descriptor (a test's capture).
    """
    if _stdout_silenced:
        return True
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced or closed
        return False
    if not hasattr(select, "poll"):  # Windows: no poll(); a broken stdout pipe is the likely cause
        return True
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR and POLLHUP are reported whatever the mask
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def stdout_silenced() -> bool:
    """Whether :func:`silence_stdout` has run: stdout's reader went away and the rest was dropped."""
    return _stdout_silenced


def silence_stdout() -> None:
    """Point stdout's file descriptor at the null device, for good.

    What is still buffered in ``sys.stdout``, and every later write (the
    log lines of a run winding down, the interpreter's flush at exit), then
    goes nowhere instead of raising ``BrokenPipeError`` again. The
    descriptor is replaced rather than ``sys.stdout``, so that the objects
    holding the old stream (the logging handlers) are covered too.
    """
    global _stdout_silenced
    _stdout_silenced = True
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no descriptor: nothing will flush to the pipe
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class BarAwareHandler(logging.StreamHandler):
    """A stream handler that clears the progress bars, writes its line, and lets them redraw.

    Without it a log line printed while a bar is drawn lands in the middle
    of the bar's line.

    When its stream's reader has gone (``blockseg run CONFIG | head -1``) the
    first line that finds it out raises ``BrokenPipeError`` in the main
    thread, so that the command ends there (and ``blockseg`` exits quietly)
    rather than printing a "Logging error" traceback for every later line;
    stdout is silenced at once, so the cleanup on the way out (closing the
    cluster, releasing the lock) writes its lines nowhere and is not cut
    short. A line logged in another thread (a block running in a thread
    of this process) is dropped: the block must not fail for it.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except BrokenPipeError:
            if not stdout_reader_gone():  # some other stream: the standard handling
                self.handleError(record)
                return
            first = not _stdout_silenced
            silence_stdout()
            if first and threading.current_thread() is threading.main_thread():
                raise
        except Exception:  # noqa: BLE001 - logging must never raise; the standard handler does the same
            self.handleError(record)
