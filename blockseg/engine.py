"""Run stages: resume from the ledger, reset what is stale, hand the blocks to the scheduler.

A stage's steps in the driver (``prepare``, a ``global_step``, ``finish``)
meet a full disk as its blocks do: :class:`~blockseg.stage_errors.ResourceError`,
one line naming the stage and the path, the traceback in the log file.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from distributed import Client

from blockseg.blocks import AlignmentError
from blockseg.config import ConfigError
from blockseg.graph.base import BlockOutput, StageState
from blockseg.ledger import fingerprint, is_current, reset_stage, stage_needs, stage_progress, total_steps
from blockseg.registry import STAGE_ORDER, stages_of
from blockseg.run_state import InputError, Run
from blockseg.scheduler import StageFailed, StageReport, run_stage
from blockseg.stage_errors import ResourceError, naming, resource_problem
from blockseg.storage import install_on_workers
from blockseg.task import Stage
from blockseg.volume import open_volume

log = logging.getLogger("blockseg")


def _check_needs(run: Run, stage: Stage) -> None:
    for name in stage_needs(run, stage):
        need = stages_of(run)[name]
        done, total, current = stage_progress(run, need)
        if not current or done < total:
            raise InputError(f"stage {stage.name} needs stage {name} to finish first ({done}/{total} blocks done)")


@contextmanager
def _driver_step(stage: Stage, done: Callable[[], int], total: int) -> Iterator[None]:
    """Turn a storage error (no space, quota, permissions) of a step in the driver into a ResourceError.

    Parameters
    ----------
    stage : Stage
        The stage the step belongs to (named in the one line).
    done : callable
        The stage's blocks done, asked only when the step fails.
    total : int
        The stage's blocks (1 for a global step).

    Raises
    ------
    ResourceError
        One line naming the stage, the problem and the path, as a block's
        resource error gives; from the original, whose traceback goes to
        the log file (the console shows it with ``--verbose``).
    """
    try:
        yield
    except ResourceError:
        raise
    except Exception as error:
        problem = resource_problem(error)
        if problem is None:
            raise
        log.debug("%s: %s", stage.name, problem, exc_info=True)
        raise ResourceError(stage.name, problem, done(), total) from error


def run_one_stage(run: Run, stage: Stage, client: Client, restart: bool = False) -> StageReport:
    """Run a stage, resuming from the ledger unless it is stale or ``restart``."""
    _check_needs(run, stage)
    run.client = client
    install_on_workers(client)
    if stage.name == "check":
        return _run_check(run, stage)
    current = is_current(run, stage)
    if stage.prepare is not None and (restart or not current or len(run.store.done_blocks(stage.name)) < total_steps(run, stage)):
        done_before = 0 if restart or not current else len(run.store.done_blocks(stage.name))
        with _driver_step(stage, lambda: done_before, total_steps(run, stage)):
            stage.prepare(run)
    if restart or not current:
        state = reset_stage(run, stage)
        log.info("%s: starting afresh", stage.name)
    else:
        state = run.store.stage_state(stage.name)
        assert state is not None
    scheduler = run.config.scheduler
    if stage.global_step is not None:
        report = StageReport(stage.name, total=1)
        if run.store.done_blocks(stage.name):
            report.skipped = 1
        else:
            start = time.perf_counter()
            with _driver_step(stage, lambda: 0, 1):
                stage.global_step(run)
            run.store.commit_block(stage.name, 0, BlockOutput())
            report.succeeded = 1
            report.seconds = time.perf_counter() - start
        log.info(report.summary())
    else:
        assert stage.block_function is not None
        grid = run.grid(stage.context(run))
        if stage.outputs(run):
            try:
                grid.check_alignment([open_volume(spec.url) for spec in stage.outputs(run) if spec.aligned])
            except AlignmentError as error:
                raise ConfigError(f"config error: {error}") from None
        failures_file = run.output_dir / "logs" / f"failed-{stage.name}.json"
        try:
            report = run_stage(
                client,
                stage.name,
                grid,
                stage.block_function(run),
                run.store,
                retries=scheduler.retries,
                window_per_thread=scheduler.window_per_thread,
                progress=scheduler.progress,
                token=state.token,
                block_timeout=scheduler.block_timeout,
                resources=stage.resources(run) if stage.resources else None,
            )
        except StageFailed as failed:
            # for `blockseg status`, which has no other way to know
            try:
                with naming(failures_file):
                    failures_file.parent.mkdir(parents=True, exist_ok=True)
                    failures_file.write_text(json.dumps([vars(f) for f in failed.report.failures], indent=2))
            except OSError as error:  # the failed blocks, not the note of them, are what the run must report
                log.warning("%s: could not note the failed blocks for blockseg status: %s",
                            stage.name, resource_problem(error) or error)
            raise
        failures_file.unlink(missing_ok=True)
    if stage.finish is not None:
        with _driver_step(stage, lambda: report.skipped + report.succeeded, report.total):
            stage.finish(run)
    run.reports[stage.name] = report
    return report


def _run_check(run: Run, stage: Stage) -> StageReport:
    """The input check: skipped while the inputs are those it last passed."""
    report = StageReport(stage.name, total=1)
    if is_current(run, stage) and run.store.done_blocks(stage.name):
        report.skipped = 1
    else:
        start = time.perf_counter()
        with _driver_step(stage, lambda: 0, 1):
            stage.global_step(run)  # the scan: raises on a bad input
        # Only a clean scan reaches the store.
        run.store.drop_stage(stage.name)
        run.store.set_stage_state(stage.name, StageState(fingerprint(run, stage), uuid.uuid4().hex))
        run.store.commit_block(stage.name, 0, BlockOutput())
        report.succeeded = 1
        report.seconds = time.perf_counter() - start
    if report.skipped:
        log.info(report.summary())  # a scan logs its own line (run_stage): the stage line appears once
    run.reports[stage.name] = report
    return report


def select_stages(run: Run, names: Sequence[str] | None) -> list[Stage]:
    """The stages to run, in pipeline order."""
    stages = stages_of(run)
    if names:
        unknown = [n for n in names if n not in stages]
        if unknown:
            expected = list(STAGE_ORDER) + [task.name for task in run.user_tasks]
            raise ConfigError(f"--stages: unknown stage(s) {unknown}; expected some of {expected}")
    chosen = [stage for name, stage in stages.items() if (not names or name in names)]
    return [stage for stage in chosen if stage.enabled(run)]


def run_pipeline(
    run: Run, client: Client, stages: Sequence[str] | None = None, restart: bool = False
) -> dict[str, StageReport]:
    """Run the chosen stages (default: all enabled ones) in order."""
    chosen = select_stages(run, stages)
    kernel_stages = ("fragments", "agglomerate")
    if any(stage.name in kernel_stages for stage in chosen):
        from blockseg.warmup import wait_for_warm_up, warm_up_workers

        warm_up_workers(client)
    for stage in chosen:
        if stage.name in kernel_stages:
            wait_for_warm_up(client)
            kernel_stages = ()
        run_one_stage(run, stage, client, restart=restart and stage.name != "check")
    return run.reports
