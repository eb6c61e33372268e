"""Silencing the output of the whole process at the file-descriptor level.

waterz prints its progress from C++ straight to file descriptor 1; the
context manager :func:`silence_stdout` points that descriptor (and the Python
stream of that name) at ``/dev/null`` while it is open, shared and reference
counted across the threads of a worker.

Examples
--------
>>> import os
>>> with silence_stdout():
...     _ = os.write(1, b"never seen\\n")
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["silence_stdout"]


# fd -> [saved duplicate of the original fd, nesting depth, saved Python
# stream]. The redirection is process-wide, so concurrent threads (dask
# workers run several) must share one redirection: the first to enter
# redirects, the last to leave restores. Without this, a second thread would
# save /dev/null as "the original" and restore it after the first one left,
# losing stdout for good.
_SILENCED: dict[int, list[Any]] = {}
_SILENCE_LOCK = threading.Lock()
_STREAM_NAMES = {1: "stdout", 2: "stderr"}


class _NullWriter(io.TextIOBase):
    """A text stream that drops everything written to it."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


def _flush_all() -> None:
    """Flush Python's and libc's buffers, so no output crosses a redirection."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    # C++ iostreams are synced with C stdio by default, so flushing every C
    # stream also pushes out what std::cout holds
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


def _dup_to_devnull(fd: int) -> int:
    """Point ``fd`` at /dev/null; return a duplicate of the original, or -1."""
    try:
        saved = os.dup(fd)
    except OSError:
        # a closed fd prints nowhere already: nothing to restore
        return -1
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    return saved


def _redirect_to_devnull(fd: int) -> None:
    """Silence ``fd``, and the Python stream of that name, once per process.

    The Python stream is swapped too because waterz's Cython wrapper also
    uses ``print``, which bypasses the fd when ``sys.stdout`` is not the
    terminal (pytest, doctest, notebooks).
    """
    entry = _SILENCED.get(fd)
    if entry is not None:
        entry[1] += 1
        return
    name = _STREAM_NAMES.get(fd)
    stream = getattr(sys, name) if name else None
    _SILENCED[fd] = [_dup_to_devnull(fd), 1, stream]
    if name:
        setattr(sys, name, _NullWriter())


def _restore(fd: int) -> None:
    """Undo one :func:`_redirect_to_devnull` of ``fd``."""
    entry = _SILENCED[fd]
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _SILENCED[fd]
    saved, _, stream = entry
    if saved >= 0:
        os.dup2(saved, fd)
        os.close(saved)
    name = _STREAM_NAMES.get(fd)
    if name:
        setattr(sys, name, stream)


@contextlib.contextmanager
def silence_stdout(stderr: bool = False) -> Iterator[None]:
    """Silence output of the whole process at the file-descriptor level.

    waterz prints its progress from C++ straight to file descriptor 1, which
    :func:`contextlib.redirect_stdout` cannot catch: that only swaps the
    Python object ``sys.stdout``. Here the descriptor itself is pointed at
    ``/dev/null`` (with ``dup2``) and restored afterwards, also when the body
    raises. Buffers are flushed on the way in (so earlier output still
    appears) and on the way out (so silenced output does not leak later).
    ``sys.stdout`` is swapped for a writer that drops everything as well,
    for Python-level prints where it is not the terminal (pytest, doctest).

    Parameters
    ----------
    stderr : bool, default False
        Also silence file descriptor 2. Off by default, such that real errors
        (and compiler messages of waterz's JIT) still show.

    Notes
    -----
    The redirection affects every thread of the process. Nested and
    concurrent uses are reference counted: the descriptors are restored when
    the last user leaves.

    Examples
    --------
    >>> with silence_stdout():
    ...     _ = os.write(1, b"never seen\\n")
    """
    fds = (1, 2) if stderr else (1,)
    with _SILENCE_LOCK:
        _flush_all()
        for fd in fds:
            _redirect_to_devnull(fd)
    try:
        yield
    finally:
        with _SILENCE_LOCK:
            _flush_all()
            for fd in fds:
                _restore(fd)
