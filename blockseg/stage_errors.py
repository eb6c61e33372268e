"""What a stage run reports, and the errors that end a stage.

:class:`StageReport` (with one :class:`BlockFailure` per block that failed
on every attempt) is what :func:`blockseg.scheduler.run_stage` returns;
:class:`StageFailed`, :class:`ResourceError` and :class:`NoWorkers` are what
it raises, and :func:`resource_problem` tells a storage error (no space,
quota, permissions) that no retry can cure from a failing block.

Examples
--------
>>> import errno
>>> resource_problem(OSError(errno.ENOSPC, "full", "/data/out.zarr"))
'no space left on device: /data/out.zarr'
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field


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


def resource_problem(error: BaseException) -> str | None:
    """One line ("no space left on device: PATH") if ``error`` or its causes is a resource error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in RESOURCE_ERRNOS:
            what = os.strerror(error.errno).lower()
            where = error.filename if error.filename is not None else "unknown path"
            return f"{what}: {where}"
        error = error.__cause__ or error.__context__
    return None


class NoWorkers(RuntimeError):
    """No worker is left that could run a block, and none came back in time."""
