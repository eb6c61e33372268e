"""Running a ``blockseg tune`` sweep: every combination at once, each in a driver thread, on one cluster.

All combinations run side by side on one dask cluster, so the cluster stays
busy while one run waits on a global step.  A finished combination leaves
``tune-result.json`` in its folder (its scores, seconds and a digest of its
whole sub-config); a rerun of the same sweep takes that as it is, and a
combination killed halfway resumes from its ledger like any run.  Each
combination's log lines go to its own ``logs/blockseg.log``; on the terminal
it shows only its warnings, and one line when it ends.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path

from blockseg.tune_plan import Combination, Outcome, Sweep

#: Prefix of the driver threads that run combinations (their log lines go to the combination's folder).
THREAD_PREFIX = "blockseg-tune-"
#: What a finished combination leaves in its folder.
RESULT_FILE = "tune-result.json"
class _ComboLogs(logging.Handler):
    """Each combination's log lines into its own ``logs/blockseg.log``, by the thread that runs it."""

    def __init__(self, folders: dict[str, Path]) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self._folders, self._files = folders, {}
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        key = threading.current_thread().name.removeprefix(THREAD_PREFIX)
        if key not in self._folders:
            return
        with self._guard:
            handle = self._files.get(key)
            if handle is None:
                (self._folders[key] / "logs").mkdir(parents=True, exist_ok=True)
                handle = self._files[key] = open(self._folders[key] / "logs" / "blockseg.log", "a")
            handle.write(self.format(record) + "\n")
            handle.flush()

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        super().close()


class _OnlyProblems(logging.Filter):
    """On the terminal, a combination says only its warnings and errors, named by its key."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = threading.current_thread().name
        if not name.startswith(THREAD_PREFIX):
            return True
        if record.levelno < logging.WARNING:
            return False
        if not getattr(record, "_tune_named", False):
            record.msg = f"tune {name.removeprefix(THREAD_PREFIX)}: {record.msg}"
            record._tune_named = True
        return True


def load_result(combination: Combination) -> dict | None:
    """The stored result of a finished combination, or None if it must (still) run."""
    path = combination.folder / RESULT_FILE
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if stored.get("digest") != combination.digest or not (combination.folder / "scores.json").exists():
        return None  # another sub-config (the base config changed) or its outputs are gone: run again
    return stored


def _write_result(combination: Combination, stored: dict) -> None:
    path = combination.folder / RESULT_FILE
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(stored, indent=2))
    os.replace(partial, path)  # whole or absent, even if the sweep is killed here


def _f1_per_threshold(combination: Combination, iou: float) -> dict[str, float]:
    """F1 at IoU ``iou`` per segments threshold, from the combination's stored tables (no pass over the volume)."""
    from blockseg.evaluate import matching_of_run
    from blockseg.inputs import open_run

    run = open_run(combination.config)
    try:
        table = matching_of_run(run, [iou])
    finally:
        run.store.close()
    return {
        name: float(next(iter(entry["matching"].values()))["f1"])
        for name, entry in table["segmentations"].items() if name != "fragments"
    }


def _run_combination(combination: Combination, client, metric: str, iou: float | None) -> Outcome:
    from blockseg import api

    stored = load_result(combination)
    recomputed = stored is None
    if stored is None:
        start = time.perf_counter()
        report = api.run(combination.config, client=client)
        seconds = time.perf_counter() - start
        if not report.ok:
            stage, stage_report = next((n, r) for n, r in report.stages.items() if r.failures)
            first = stage_report.failures[0]
            why = (first.traceback.strip().splitlines() or ["?"])[-1]
            reason = f"{len(report.failures)} block(s) failed, first {stage} block {first.block_id}: {why}"
            return Outcome(combination, None, seconds, True, failed=reason)
        scores = report.scores or json.loads((combination.folder / "scores.json").read_text())
        stored = {"digest": combination.digest, "values": combination.values, "seconds": seconds, "scores": scores}
        _write_result(combination, stored)
    outcome = Outcome(combination, stored["scores"], float(stored["seconds"]), recomputed)
    if metric == "f1":
        cache = f"f1@{iou!r}"
        if cache not in stored:  # kept beside the scores: another --metric later costs nothing
            stored[cache] = _f1_per_threshold(combination, float(iou))
            _write_result(combination, stored)
        outcome.f1 = stored[cache]
    return outcome


def run_sweep(sweep: Sweep, client, parallel: int | None = None, say=print) -> list[Outcome]:
    """Run every combination not yet finished, ``parallel`` at once (default: all), on ``client``.

    Parameters
    ----------
    sweep : Sweep
        From :func:`plan_sweep`.
    client : distributed.Client
        The one cluster every combination's blocks run on.
    parallel : int, optional
        Combinations whose drivers run at the same time.
    say : callable
        Where the one line per finished combination goes.

    Returns
    -------
    list of Outcome
        In the order of ``sweep.combinations``.
    """
    combos = sweep.combinations
    folders = {c.key: c.folder for c in combos}
    blockseg_log = logging.getLogger("blockseg")
    to_files, quiet = _ComboLogs(folders), _OnlyProblems()
    handlers = list(blockseg_log.handlers)
    for handler in handlers:
        handler.addFilter(quiet)
    blockseg_log.addHandler(to_files)
    outcomes: dict[str, Outcome] = {}
    errors: list[BaseException] = []
    pending = queue.SimpleQueue()
    for combination in combos:
        pending.put(combination)
    guard = threading.Lock()
    stopping = threading.Event()  # the sweep was interrupted: runs that now break say nothing

    def one(combination: Combination) -> None:
        threading.current_thread().name = THREAD_PREFIX + combination.key  # routes its log lines
        try:
            outcome = _run_combination(combination, client, sweep.metric, sweep.iou)
        except BaseException as error:  # noqa: BLE001 - reported after the other combinations finish
            if stopping.is_set():
                return
            with guard:
                errors.append(error)
                say(f"tune: {combination.key} ({combination.label}) stopped: {error}")
            return
        if outcome.failed:
            state = f"FAILED: {outcome.failed} (see {combination.folder / 'logs'})"
        elif outcome.recomputed:
            state = f"done in {outcome.seconds:.1f} s"
        else:
            state = "already done, not recomputed"
        with guard:
            outcomes[combination.key] = outcome
            say(f"tune: {len(outcomes)}/{len(combos)} {combination.key} ({combination.label}): {state}")

    def drain() -> None:
        while True:
            try:
                combination = pending.get_nowait()
            except queue.Empty:
                return
            if stopping.is_set():
                return
            one(combination)

    # daemon threads, joined with a timeout: Ctrl-C reaches the main thread at once, and the
    # cluster's shutdown (the caller's) ends the runs still going; their ledgers resume them
    drivers = [threading.Thread(target=drain, name=f"{THREAD_PREFIX}driver-{i}", daemon=True)
               for i in range(max(1, min(parallel or len(combos), len(combos))))]
    try:
        for driver in drivers:
            driver.start()
        for driver in drivers:
            while driver.is_alive():
                driver.join(0.2)
    finally:
        stopping.set()
        if not any(driver.is_alive() for driver in drivers):
            # else interrupted: runs still going keep their lines off the terminal until the process ends
            blockseg_log.removeHandler(to_files)
            to_files.close()
            for handler in handlers:
                handler.removeFilter(quiet)
    if errors:
        raise errors[0]
    return [outcomes[c.key] for c in combos]
