"""A kill campaign: kill the demo pipeline at random moments, resume it, compare.

One undisturbed reference run of the demo pipeline (``blockseg run`` as a
subprocess, a small demo volume cut into small blocks so every stage has many
of them, 2 local workers), then ``--runs`` disturbed runs, each in a fresh
output folder:

1. ``blockseg run`` starts; once the driver reaches the run's target stage
   (its stdout stage lines say where it is), a seeded random moment within
   that stage's duration in the reference run later, it is hit by one of
   ``driver-sigkill`` (SIGKILL of the driver), ``worker-sigkill`` (SIGKILL of
   a random dask worker process, a child of the driver) or ``driver-sigterm``.
   Segments lasts milliseconds on this volume, so a kill aimed at it goes
   out the moment its k-th lookup table (k seeded) appears in the store.
   Target stages and kill kinds go round in seeded shuffles, so a campaign
   covers every stage (startup, check, fragments, agglomerate, segments,
   relabel, evaluate, finish: the cluster's shutdown after the last stage)
   and every kind (``--targets`` aims them at some phases only). The stage counted is the one the driver was in when the
   signal went out (from the lines it had printed by then).
2. A killed driver's workers are given 10 s to go; those still there are
   counted as ``orphans`` and killed. A run whose worker was killed is left
   to finish by itself.
3. A plain rerun of the same command. It, and a run left to finish after a
   worker kill, must end within ``--bound`` seconds or it counts as a hang
   (and is killed).
4. The fragments, every segmentation volume and scores.json must equal the
   reference run's bit for bit, else the run is a mismatch (a rerun that
   exits non-zero is one too, and is also counted in ``failed_reruns``).

Printed, and with ``--json PATH`` written: ``runs``, ``kills`` (stage ->
count), ``kills_total``, ``kills_by_kind``, ``mismatches``, ``hangs``,
``failed_reruns``, ``orphans``, ``tracebacks`` (runs whose driver printed a
Python traceback, disturbed or rerun), ``store``, ``blocks_per_stage``, ``seconds``
and ``details`` (one object per run). Each run folder holds the driver's
stdout with seconds since its start (``disturbed.out``, ``rerun.out``) and
its stderr (``*.err``). A mismatching or hanging run's folder is kept (its
path is printed); the exit code is 1 if there was any.

Usage::

    python benchmarks/chaos.py --runs 20 --json c.json                # SQLite graph store
    python benchmarks/chaos.py --runs 20 --store file --json c.json   # file:// graph store
    python benchmarks/chaos.py --runs 3 --quick                       # a smaller volume
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

#: Where a run can be, in order; "startup" is before the cluster is up, "finish" after the last stage.
PHASES = ("startup", "check", "fragments", "agglomerate", "segments", "relabel", "evaluate", "finish")
PIPELINE = PHASES[1:-1]
KINDS = ("driver-sigkill", "worker-sigkill", "driver-sigterm")

FULL = dict(shape=(32, 128, 128), block_voxels=(8, 32, 32))    # 64 blocks per stage
QUICK = dict(shape=(16, 96, 96), block_voxels=(8, 32, 32))     # 18 blocks per stage
VOXEL_SIZE = (20, 10, 10)
RELABEL_THRESHOLDS = [0.3, 0.5]
#: The demo config's segments thresholds (one lookup table each).
THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]

_DONE = re.compile(r"^blockseg: ([a-z_]+): \d+ block\(s\) done")
_STARTING = re.compile(r"^blockseg: ([a-z_]+): starting afresh")
_CLUSTER_UP = re.compile(r"^blockseg: .*dask cluster")


def phase_after(lines: list[str]) -> str:
    """The phase a driver is in once it has printed ``lines``."""
    phase = "startup"
    for line in lines:
        if phase == "startup" and _CLUSTER_UP.match(line):
            phase = "check"
        match = _STARTING.match(line)
        if match and match.group(1) in PIPELINE:
            phase = match.group(1)
        match = _DONE.match(line)
        if match and match.group(1) in PIPELINE:
            index = PIPELINE.index(match.group(1))
            following = PIPELINE[index + 1] if index + 1 < len(PIPELINE) else "finish"
            # never backwards (check prints two done lines, the second after its scan)
            if PHASES.index(following) > PHASES.index(phase):
                phase = following
    return phase


class Driver:
    """``blockseg run CONFIG`` in a session of its own; its stdout lines are kept with the time each arrived."""

    def __init__(self, config: Path, log_name: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        folder = config.parent
        self.log = open(folder / f"{log_name}.err", "w")
        self.out = open(folder / f"{log_name}.out", "w")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "blockseg.cli", "run", str(config)],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            now = time.monotonic()
            self.lines.append((now, line.rstrip("\n")))
            self.out.write(f"{now - self.started:8.3f} {line}")
            self.out.flush()

    def phase(self, until: float | None = None) -> str:
        return phase_after([line for t, line in list(self.lines) if until is None or t <= until])

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it is still running after ``timeout`` seconds."""
        try:
            code = self.process.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=10)
        return code

    def workers(self) -> list[int]:
        """The dask worker processes (multiprocessing spawn children of the driver)."""
        import psutil

        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = []
        for child in children:
            try:
                if any("spawn_main" in part for part in child.cmdline()):
                    found.append(child.pid)
            except psutil.Error:
                continue
        return sorted(found)

    def session(self) -> list[int]:
        """Every process still in the driver's session (the driver's pid is the session id)."""
        import psutil

        pids = []
        for process in psutil.process_iter():
            try:
                if os.getsid(process.pid) == self.process.pid:
                    pids.append(process.pid)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return pids

    def kill_session(self) -> None:
        for pid in self.session():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self._reader.join(timeout=10)

    def close(self) -> None:
        self._reader.join(timeout=10)
        self.log.close()
        self.out.close()


def write_run_config(folder: Path, inputs: Path, store: str, block_voxels) -> Path:
    """The demo config in ``folder``, reading ``inputs`` and writing ``folder/output``."""
    from blockseg.demo import write_demo_config

    overrides = {
        "input.affinities": str(inputs / "affinities"),
        "input.ground_truth": str(inputs / "labels"),
        "block_shape": [b * v for b, v in zip(block_voxels, VOXEL_SIZE)],
        "stages.segments.thresholds": THRESHOLDS,
        "stages.relabel.thresholds": RELABEL_THRESHOLDS,
        "cluster.local.workers": 2,
        "cluster.local.dashboard": False,
        "scheduler.progress": False,
    }
    if store == "file":
        overrides["graph"] = "file://output/graph"
    folder.mkdir(parents=True, exist_ok=True)
    return write_demo_config(folder, overrides)


def read_results(output: Path) -> dict[str, object]:
    """Fragments, every segmentation volume (arrays) and scores.json (bytes) of a finished run."""
    from blockseg.volume import open_volume

    results: dict[str, object] = {}
    volumes = output / "volumes.zarr"
    names = ["fragments"] + sorted(
        f"segmentation/{p.name}" for p in (volumes / "segmentation").glob("threshold_*") if p.is_dir()
    )
    for name in names:
        if (volumes / name).exists():
            volume = open_volume(volumes / name)
            results[name] = volume.read(volume.roi)
    scores = output / "scores.json"
    if scores.exists():
        results["scores.json"] = scores.read_bytes()
    return results


def differences(reference: dict, results: dict) -> list[str]:
    """The names of the results that are missing or not equal bit for bit."""
    different = []
    for name, expected in reference.items():
        got = results.get(name)
        if got is None:
            different.append(f"{name} (missing)")
        elif isinstance(expected, bytes):
            if got != expected:
                different.append(name)
        elif got.dtype != expected.dtype or got.shape != expected.shape or not np.array_equal(got, expected):
            different.append(name)
    different += [f"{name} (extra)" for name in results if name not in reference]
    return different


def finish_run(driver: Driver, bound: float) -> tuple[int | None, float]:
    """Wait up to ``bound`` seconds for a driver; kill its session if it runs longer (exit code None)."""
    code = driver.wait(bound - (time.monotonic() - driver.started))
    if code is None:
        driver.kill_session()
    seconds = time.monotonic() - driver.started
    driver.close()
    return code, seconds


def reference_run(folder: Path, inputs: Path, store: str, block_voxels, bound: float):
    """The undisturbed run: its results, and how long each phase lasted."""
    config = write_run_config(folder, inputs, store, block_voxels)
    driver = Driver(config, "reference")
    code, seconds = finish_run(driver, bound)
    if code != 0:
        raise SystemExit(f"chaos: the reference run failed (exit {code}); see {folder}/reference.err and reference.out")
    durations = dict.fromkeys(PHASES, 0.0)
    previous_phase, previous_time = "startup", driver.started
    for t, _ in driver.lines:
        phase = driver.phase(until=t)
        if phase != previous_phase:
            durations[previous_phase] += t - previous_time
            previous_phase, previous_time = phase, t
    durations[previous_phase] += driver.started + seconds - previous_time
    return read_results(folder / "output"), durations, seconds


def plan(runs: int, seed: int, targets=PHASES) -> list[tuple[str, str, float]]:
    """(target phase, kill kind, fraction of the phase) per run, from seeded shuffles."""
    rng = np.random.default_rng(seed)

    def rounds(items):
        while True:
            yield from (items[i] for i in rng.permutation(len(items)))

    phases, kinds = rounds(list(targets)), rounds(KINDS)
    # drawn in turn (not zipped lazily) so the plan depends on the seed alone
    return [(next(phases), next(kinds), float(rng.uniform(0.0, 0.9))) for _ in range(runs)]


def _await_lut(driver: Driver, output: Path, count: int, deadline: float) -> None:
    """Spin until the segments stage has written ``count`` lookup tables (of either graph store)."""
    folders = (output / "graph.db.luts", output / "graph" / "luts")
    count = min(count, len(THRESHOLDS))
    while driver.process.poll() is None and time.monotonic() < deadline:
        found = 0
        for lut_dir in folders:
            try:
                found += sum(1 for entry in os.scandir(lut_dir) if entry.name.startswith("threshold_"))
            except FileNotFoundError:
                continue
        if found >= count:
            return
        if PHASES.index(driver.phase()) > PHASES.index("segments"):
            return
        if PHASES.index(driver.phase()) < PHASES.index("agglomerate"):
            time.sleep(0.002)  # spin only from the stage before


def disturbed_run(folder: Path, inputs: Path, store: str, block_voxels, target: str, kind: str, fraction: float,
                  durations: dict, bound: float, pick: np.random.Generator) -> dict:
    config = write_run_config(folder, inputs, store, block_voxels)
    driver = Driver(config, "disturbed")
    detail: dict = {"target": target, "kind": kind, "stage": None, "hang": False, "orphans": 0}
    deadline = driver.started + bound
    # 1. wait for the target phase, then a random part of its reference duration
    while PHASES.index(driver.phase()) < PHASES.index(target) and driver.process.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.002)
    if target == "segments":
        # segments lasts a few milliseconds here, less than a poll of the driver's
        # lines takes: aim at the moment its k-th lookup table appears instead
        _await_lut(driver, folder / "output", 1 + int(fraction / 0.9 * len(THRESHOLDS)), deadline)
    else:
        phase_start = time.monotonic()
        delay = fraction * durations[target]
        while time.monotonic() < phase_start + delay and driver.process.poll() is None:
            time.sleep(0.002)
    # 2. the kill
    killed_at = None
    if driver.process.poll() is None and time.monotonic() <= deadline:
        if kind == "worker-sigkill":
            while driver.process.poll() is None and time.monotonic() <= deadline:
                workers = driver.workers()
                if workers:
                    victim = workers[int(pick.integers(len(workers)))]
                    try:
                        os.kill(victim, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    killed_at = time.monotonic()
                    detail["pid"] = victim
                    break
                time.sleep(0.01)
        else:
            os.kill(driver.process.pid, signal.SIGKILL if kind == "driver-sigkill" else signal.SIGTERM)
            killed_at = time.monotonic()
    if killed_at is not None:
        detail["seconds_into_run"] = round(killed_at - driver.started, 3)
    # 3. a killed driver exits (its remaining lines are what it printed before the signal);
    #    a run that lost a worker is left to finish
    if kind == "worker-sigkill" or killed_at is None:
        code, _ = finish_run(driver, bound)
        detail["hang"] = code is None
        if killed_at is not None:
            detail["stage"] = driver.phase(until=killed_at)
    else:
        code = driver.wait(60)
        if code is None:  # a driver that ignores the signal
            driver.kill_session()
            detail["hang"] = True
        detail["stage"] = driver.phase()
        end = time.monotonic() + 10
        while driver.session() and time.monotonic() < end:
            time.sleep(0.1)
        leftover = driver.session()
        detail["orphans"] = len(leftover)
        if leftover:
            driver.kill_session()
        driver.close()
    detail["disturbed_exit"] = code if code is not None else "hang"
    # 4. the plain rerun
    rerun = Driver(config, "rerun")
    code, seconds = finish_run(rerun, bound)
    detail["rerun_exit"] = code if code is not None else "hang"
    detail["tracebacks"] = [name for name in ("disturbed", "rerun")
                            if "Traceback (most recent call last)" in (folder / f"{name}.err").read_text()]
    detail["rerun_seconds"] = round(seconds, 1)
    detail["hang"] = detail["hang"] or code is None
    return detail


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--store", choices=("sqlite", "file"), default="sqlite", help="the graph store")
    parser.add_argument("--quick", action="store_true", help="a smaller volume (18 blocks per stage, not 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bound", type=float, default=300.0, help="seconds a run may take before it is a hang")
    parser.add_argument("--targets", default=",".join(PHASES),
                        help=f"comma-separated phases to aim the kills at (default: all of {','.join(PHASES)})")
    parser.add_argument("--json", metavar="PATH", help="write the figures here")
    parser.add_argument("--workdir", help="folder for the runs (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    if not targets or any(name not in PHASES for name in targets):
        parser.error(f"--targets: expected some of {','.join(PHASES)}")

    from blockseg.demo import write_demo_inputs

    sizes = QUICK if args.quick else FULL
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="blockseg-chaos-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    write_demo_inputs(workdir, shape=sizes["shape"], seed=args.seed)
    inputs = workdir / "input.zarr"
    blocks = int(np.prod([-(-s // b) for s, b in zip(sizes["shape"], sizes["block_voxels"])]))
    print(f"chaos: demo volume {sizes['shape']}, blocks {sizes['block_voxels']} ({blocks} per stage), "
          f"{args.store} graph store, 2 workers, {args.runs} run(s), seed {args.seed}", flush=True)

    reference, durations, seconds = reference_run(workdir / "reference", inputs, args.store,
                                                  sizes["block_voxels"], args.bound)
    print(f"reference: {seconds:.1f} s; " + ", ".join(f"{p} {durations[p]:.2f} s" for p in PHASES), flush=True)

    pick = np.random.default_rng(args.seed + 1)
    details, kept = [], []
    for index, (target, kind, fraction) in enumerate(plan(args.runs, args.seed, targets), 1):
        folder = workdir / f"run-{index:02d}"
        detail = disturbed_run(folder, inputs, args.store, sizes["block_voxels"], target, kind, fraction,
                               durations, args.bound, pick)
        if detail["rerun_exit"] == 0:
            different = differences(reference, read_results(folder / "output"))
        elif detail["rerun_exit"] == "hang":
            different = []  # counted as a hang, not twice
        else:
            different = [f"rerun exit {detail['rerun_exit']}"]
        detail["mismatch"] = different
        details.append(detail)
        verdict = "identical" if not different and not detail["hang"] else (
            "HANG" if detail["hang"] else "MISMATCH: " + ", ".join(different))
        where = detail["stage"] or "no kill (the run ended first)"
        print(f"run {index}/{args.runs}: {kind} in {where} (target {target}, "
              f"{detail.get('seconds_into_run', '-')} s in); disturbed run exit {detail['disturbed_exit']}, "
              f"orphans {detail['orphans']}{', TRACEBACK in ' + '+'.join(detail['tracebacks']) if detail['tracebacks'] else ''}; rerun exit {detail['rerun_exit']} in {detail['rerun_seconds']} s: "
              f"{verdict}", flush=True)
        if different or detail["hang"]:
            kept.append(folder)
            detail["folder"] = str(folder)
        elif not keep:
            shutil.rmtree(folder, ignore_errors=True)

    kills = {phase: sum(1 for d in details if d["stage"] == phase) for phase in PHASES}
    by_kind = {kind: sum(1 for d in details if d["kind"] == kind and d["stage"]) for kind in KINDS}
    summary = {
        "runs": len(details),
        "kills": kills,
        "kills_total": sum(kills.values()),
        "kills_by_kind": by_kind,
        "mismatches": sum(1 for d in details if d["mismatch"]),
        "hangs": sum(1 for d in details if d["hang"]),
        "failed_reruns": sum(1 for d in details if d["rerun_exit"] not in (0, "hang")),
        "orphans": sum(d["orphans"] for d in details),
        "tracebacks": sum(1 for d in details if d["tracebacks"]),
        "store": args.store,
        "blocks_per_stage": blocks,
        "seconds": round(time.monotonic() - started, 1),
        "reference_seconds": round(seconds, 1),
        "details": details,
    }
    print(f"runs {summary['runs']}, kills {summary['kills_total']}, mismatches {summary['mismatches']}, "
          f"hangs {summary['hangs']}, failed reruns {summary['failed_reruns']}, orphans {summary['orphans']}, "
          f"runs with a traceback on the terminal {summary['tracebacks']} "
          f"({args.store} store, {summary['seconds']:.0f} s)")
    print("kills by stage: " + ", ".join(f"{phase} {count}" for phase, count in kills.items()))
    print("kills by kind: " + ", ".join(f"{kind} {count}" for kind, count in by_kind.items()))
    for folder in kept:
        print(f"kept for a look: {folder}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if not keep and not kept:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if summary["mismatches"] or summary["hangs"] else 0


if __name__ == "__main__":
    sys.exit(main())
