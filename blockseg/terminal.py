"""What a run shows on the terminal: one line per stage, a progress bar only on a terminal.

The run's narrative (one summary line per stage, the cluster, where the
outputs are) goes to stdout through :class:`BarAwareHandler`, warnings and
errors to stderr. A progress bar (:func:`progress_bar`) is drawn on stderr
only when stderr is a terminal, and it is cleared when its stage ends, so
that the stage's summary line is what stays on the screen, once. When the
output goes to a file or a pipe there are no bars at all: plain lines only.

Examples
--------
>>> bar = progress_bar(total=3, initial=1, desc="fragments", enabled=True)
>>> bar.disable  # under doctest stderr is not a terminal: no bar, no escape codes
True
>>> bar.close()
"""

from __future__ import annotations

import logging
import sys
from typing import IO

from tqdm import tqdm

#: Console verbosity chosen on the command line: ``--quiet``, the default, ``--verbose``.
QUIET, NORMAL, VERBOSE = logging.WARNING, logging.INFO, logging.DEBUG


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


class BarAwareHandler(logging.StreamHandler):
    """A stream handler that clears the progress bars, writes its line, and lets them redraw.

    Without it a log line printed while a bar is drawn lands in the middle
    of the bar's line.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise; the standard handler does the same
            self.handleError(record)
