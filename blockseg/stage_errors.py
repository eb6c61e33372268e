"""What a stage run reports, and the errors that end a stage.

:class:`StageReport` (with one :class:`BlockFailure` per block that failed
on every attempt) is what :func:`blockseg.scheduler.run_stage` returns;
:class:`StageFailed`, :class:`ResourceError` and :class:`NoWorkers` are what
it raises, and :func:`resource_problem` tells a storage error (no space,
quota, permissions) that no retry can cure from a failing block.
:func:`naming` puts the path into an OSError that a write or a close raised
without one, so that the one line says which file could not be written.

Examples
--------
>>> import errno
>>> resource_problem(OSError(errno.ENOSPC, "full", "/data/out.zarr"))
'no space left on device: /data/out.zarr'
>>> try:
...     with naming("/data/out/scores.json"):
...         raise OSError(errno.ENOSPC, "No space left on device")
... except OSError as error:
...     resource_problem(error)
'no space left on device: /data/out/scores.json'
"""

from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class BlockFailure:
    """A block that failed on every attempt."""

    block_id: int
    roi: str
    worker: str
    attempts: int
    traceback: str

    def describe(self) -> str:
        return (
            f"block {self.block_id} (write ROI {self.roi}) failed {self.attempts} time(s), "
            f"last on {self.worker}:\n{self.traceback}"
        )


@dataclass
class StageReport:
    """What happened when a stage ran."""

    stage: str
    total: int
    skipped: int = 0
    submitted: int = 0
    succeeded: int = 0
    seconds: float = 0.0
    failures: list[BlockFailure] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def summary(self) -> str:
        text = (
            f"{self.stage}: {self.succeeded} block(s) done, {self.skipped} already done, "
            f"{self.submitted} submitted, in {self.seconds:.1f} s"
        )
        if self.failures:
            text += f"; {len(self.failures)} FAILED"
        return text


class StageFailed(RuntimeError):
    """Some blocks of a stage failed on every attempt."""

    def __init__(self, report: StageReport) -> None:
        self.report = report
        lines = [f"stage {report.stage}: {len(report.failures)} of {report.total} block(s) failed"]
        lines += [failure.describe() for failure in report.failures]
        super().__init__("\n".join(lines))


class ResourceError(RuntimeError):
    """A block could not write: no space left, quota exceeded, permission denied.

    Raised once the blocks in flight have finished (no new block starts:
    every one would fail alike); ``str()`` is one line naming the path and
    how many blocks of the stage are done.
    """

    def __init__(self, stage: str, problem: str, done: int, total: int) -> None:
        self.stage, self.problem, self.done, self.total = stage, problem, done, total
        super().__init__(
            f"{stage}: {problem}; {done} of {total} block(s) of the stage done, "
            "the rerun resumes from there once that is fixed"
        )


#: errno values that no retry can cure: the storage, not the block, is at fault.
RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


#: numpy's ``ndarray.tofile`` (behind ``np.save`` to a file) reports a short write
#: as ``OSError("11468 requested and 7152 written")``: no errno, no path.
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")


def resource_problem(error: BaseException) -> str | None:
    """One line ("no space left on device: PATH") if ``error`` or its causes is a resource error.

    Parameters
    ----------
    error : BaseException
        What a block or a step of the driver raised; its ``__cause__`` and
        ``__context__`` are read too (a library often wraps the OSError).

    Returns
    -------
    str or None
        ``"<strerror>: <path>"`` for an OSError whose errno no retry can
        cure (:data:`RESOURCE_ERRNOS`), or for numpy's short write, which
        carries no errno (a full disk or quota is what cuts a write to a
        regular file short); None for anything else.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            where = error.filename if error.filename is not None else "unknown path"
            if error.errno in RESOURCE_ERRNOS:
                return f"{os.strerror(error.errno).lower()}: {where}"
            if error.errno is None and _SHORT_WRITE.match(str(error)):
                return f"a write stopped short ({error}), the disk or quota is probably full: {where}"
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Give ``path`` as the file name of an OSError raised inside the ``with`` statement without one.

    Only ``open`` names its file: a ``write``, ``flush`` or ``close`` that
    fails for want of space raises ``OSError(ENOSPC)`` without one, and the
    one line the command prints would say "unknown path". The error itself
    gets the name (its type, errno and traceback stay; pickling keeps the
    name, so an error raised on a worker arrives with it).

    Parameters
    ----------
    path : str or os.PathLike
        The file (or volume) the statement writes.
    """
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno is not None:
            error.filename = os.fspath(path)
        raise


class NoWorkers(RuntimeError):
    """No worker is left that could run a block, and none came back in time."""
