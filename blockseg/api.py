"""The Python face of blockseg: :func:`run` a pipeline, or :func:`blockwise` one function over a volume.

Both return a :class:`Report` (per stage: blocks done, skipped, failed,
seconds) and never exit the interpreter; a bad config or input raises
:class:`~blockseg.errors.ConfigError` (or InputError, VolumeError) with a
one-line message before any work.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pydantic import BaseModel

from blockseg.scheduler import StageFailed, StageReport
from blockseg.task import Read, Task, Write


@dataclass
class Report:
    """What a run did, per stage, and the scores when it evaluated."""

    stages: dict[str, StageReport] = field(default_factory=dict)
    scores: dict | None = None

    @property
    def ok(self) -> bool:
        """Whether every block of every stage succeeded."""
        return not any(report.failures for report in self.stages.values())

    @property
    def failures(self) -> list:
        return [failure for report in self.stages.values() for failure in report.failures]

    def table(self) -> list[dict]:
        """One row per stage: done, skipped, failed, seconds."""
        return [
            {"stage": name, "done": r.succeeded, "skipped": r.skipped, "failed": len(r.failures), "seconds": r.seconds}
            for name, r in self.stages.items()
        ]

    def __str__(self) -> str:
        return "\n".join(report.summary() for report in self.stages.values())


def _config(config: Any):
    from blockseg.config import PipelineConfig, load_config, parse_config

    if isinstance(config, PipelineConfig):
        return config
    if isinstance(config, Mapping):
        return parse_config(dict(config))
    return load_config(config)


@contextlib.contextmanager
def _client_for(config, client):
    if client is not None:
        yield client
        return
    from blockseg.cluster import open_client

    with open_client(config.cluster, quiet=True, log_dir=config.output_dir / "logs") as started:
        yield started


def run(config: Any, stages: Sequence[str] | None = None, client=None, restart: bool = False) -> Report:
    """Run a pipeline (all its enabled stages, or ``stages``), resuming from its ledger.

    Parameters
    ----------
    config : path, mapping or PipelineConfig
        A pipeline YAML file, the same as a dict (paths relative to the
        current folder), or a parsed config.
    stages : list of str, optional
        Stage names to run (default: every enabled one, users' tasks included).
    client : distributed.Client, optional
        Where blocks run; default: the cluster of ``config.cluster``.
    restart : bool
        Redo the chosen stages from scratch.

    Returns
    -------
    Report
        ``report.ok`` is False when blocks failed on every retry
        (``report.failures`` says which and why); the stages after the
        failed one did not run.

    Notes
    -----
    It leaves what ``blockseg run`` leaves for ``blockseg report``: the
    stages' timings in ``logs/stages.json``, and ``scores.png`` beside
    ``scores.json`` when the run has scores (and matplotlib is installed).
    """
    from blockseg.engine import run_pipeline, select_stages
    from blockseg.inputs import open_run
    from blockseg.lock import OutputLock
    from blockseg.memory import check_block_memory
    from blockseg.plots import write_scores_png
    from blockseg.report import record_stages

    config = _config(config)
    with OutputLock(config.output_dir, command="blockseg.run"):
        pipeline_run = open_run(config, restart=restart)
        try:
            with _client_for(config, client) as active:
                check_block_memory(pipeline_run, select_stages(pipeline_run, stages), active)
                try:
                    run_pipeline(pipeline_run, active, stages=stages, restart=restart)
                except StageFailed as failed:
                    pipeline_run.reports[failed.report.stage] = failed.report
        finally:
            pipeline_run.store.close()
            record_stages(pipeline_run)
        if pipeline_run.scores is not None:
            write_scores_png(pipeline_run.scores, config.output_dir)
    return Report(dict(pipeline_run.reports), pipeline_run.scores)


class FunctionTask(Task):
    """A plain function as a task: what :func:`blockwise` runs."""

    class Params(BaseModel):
        kwargs: dict = {}

    def __init__(self, function: Callable, reads: dict[str, Read], writes: dict[str, Write], name: str, kwargs: dict):
        super().__init__({"kwargs": kwargs}, name=name)
        self.function = function
        self._reads, self._writes = reads, writes

    def path(self) -> str:  # the ledger identifies the function by its module and name
        return f"{getattr(self.function, '__module__', '?')}:{getattr(self.function, '__qualname__', repr(self.function))}"

    def reads(self, params):
        return self._reads

    def writes(self, params):
        return self._writes

    def process(self, params, **arrays_and_extras):
        from blockseg.task import _accepted

        arrays = {name: arrays_and_extras.pop(name) for name in self._reads}
        # voxel_size, block, read_roi, state: passed when the function takes them
        return self.function(**arrays, **params.kwargs, **_accepted(self.function, arrays_and_extras))


def blockwise(
    function: Callable,
    inputs: Mapping[str, str],
    outputs: Mapping[str, str | Write],
    context: float | Sequence[float] = 0,
    *,
    block_shape: Sequence[int] | None = None,
    dtype: str = "float32",
    roi: tuple[Sequence[int], Sequence[int]] | None = None,
    ledger: str | Path | None = None,
    client=None,
    workers: int | None = None,
    retries: int = 2,
    progress: bool = False,
    restart: bool = False,
    name: str = "blockwise",
    kwargs: dict | None = None,
    task: Task | None = None,
) -> Report:
    """Run ``function`` over every block of the inputs, like ``dask.array.map_overlap``, resumably.

    Parameters
    ----------
    function : callable
        ``function(**arrays, **kwargs)``: the inputs as numpy arrays over the
        block's write ROI grown by ``context`` (clipped to the data), by the
        names of ``inputs``; returns an array over that ROI or over the
        write ROI (one output), or a dict of them by output name.
    inputs : mapping of name to zarr array path / URL
    outputs : mapping of name to zarr array path / URL, or to a :class:`Write` with ``url`` set
        Created (with ``dtype``) over the inputs' ROI when they do not exist.
    context : float or sequence of float
        nm read around each block.
    block_shape : sequence of int, optional
        Block size in nm (default: the first input's chunks).
    ledger : path, optional
        The folder for the done marks (``graph.db``) and logs; default:
        ``<first output's container>.blockseg`` beside it. Calling again
        with the same arguments resumes: done blocks are not run again.
    task : Task, optional
        Run this task instance instead of ``function`` (its ``reads`` and
        ``writes`` must name URLs).

    Returns
    -------
    Report
    """
    from blockseg.config import parse_config
    from blockseg.engine import run_one_stage
    from blockseg.geometry import Roi
    from blockseg.graph import open_store
    from blockseg.run_state import Run
    from blockseg.user_tasks import bind_tasks
    from blockseg.volume import open_volume, split_array_url

    if task is None:
        writes = {
            out: spec if isinstance(spec, Write) else Write(dtype, url=str(spec)) for out, spec in outputs.items()
        }
        reads = {key: Read(str(url), context) for key, url in inputs.items()}
        task = FunctionTask(function, reads, writes, name, kwargs or {})
    first_read = next(iter(task.reads(task.parameters).values()), None)
    if first_read is None:
        raise ValueError("blockwise: give at least one input")
    reference = open_volume(first_read.source)
    if block_shape is None:
        block_shape = [c * v for c, v in zip(reference.chunk_shape, reference.voxel_size)]
    first_output = next(iter(task.writes(task.parameters).values()))
    if ledger is None:
        container, _ = split_array_url(first_output.url)
        ledger = f"{str(container).rstrip('/')}.blockseg"
    data = {
        "input": {"raw": str(first_read.source)},
        "output": str(ledger),
        "block_shape": list(block_shape),
        "cluster": {"local": {"workers": workers}},
        "scheduler": {"retries": retries, "progress": progress, "check_inputs": False},
    }
    if roi is not None:
        data["roi"] = {"offset": list(roi[0]), "shape": list(roi[1])}
    config = parse_config(data, Path.cwd())
    total_roi = Roi(*roi) if roi is not None else reference.roi
    config.output_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(config.graph_url)
    one_off = Run(config, store, None, None, total_roi, raw=reference)
    try:
        one_off.user_tasks = bind_tasks(one_off, {task.name: task}, {})
        with _client_for(config, client) as active:
            try:
                run_one_stage(one_off, task, active, restart=restart)
            except StageFailed as failed:
                one_off.reports[failed.report.stage] = failed.report
    finally:
        store.close()
    return Report(dict(one_off.reports))
