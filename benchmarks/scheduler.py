"""The driver's scale: no-op blocks per second, its memory, and the ledger at 10^6 blocks.

A no-op stage (a module-level block function returning an empty
``BlockOutput``, wrapped in ``functools.partial`` as the pipeline's stages
are) runs through ``blockseg.scheduler.run_stage`` over grids of 10^3, 10^4
and 10^5 blocks on a local cluster (``--workers`` single-threaded workers on
127.0.0.1), with the SQLite store and with the file store. Each run is driven
from a fresh process connected to that cluster, so the driver's peak resident
memory is that run's alone (``VmHWM``: ``ru_maxrss`` would carry the forking
parent's peak into the child); the same stage is then run a
second time, which must submit nothing (every block is in the ledger), and
that is timed too. Before the first run the stage's state (its token) is
set in the store, as the pipeline's ``reset_stage`` does: where workers
commit (the file store) each commit carries the token, and the store
refuses a block whose token is not the stage's current one.

Then, without running anything, a 10^6-block grid is enumerated (every
block's write and read ROI) and a ledger of 10^6 done marks, written in one
transaction, is looked up (``store.done_blocks``) and resumed from
(``run_stage`` on the 10^6-block grid with every block done: it must submit
nothing), each in a fresh process, timed, with its peak memory.

Printed, and with ``--json PATH`` written as one flat object:
``noop_blocks_per_s`` (the largest SQLite run), ``noop_blocks_per_s_1e3``,
``..._1e4``, ``..._1e5`` (SQLite), ``noop_blocks_per_s_file_1e3``, ...
(file store), ``driver_peak_mib_1e3``, ... (``_file_1e3``, ...: first and
second run), ``driver_baseline_mib`` (the driver before its first block),
``rerun_seconds_1e3`` and ``rerun_submitted_1e3``, ... (``_file_1e3``, ...),
``cpu_ms_per_block_{driver,scheduler,workers}_1e3``, ... (CPU time per
block of the driver process, of this process, which hosts the scheduler and
the nannies, and of the worker processes together: on a shared or busy
machine these say more than blocks/s, and their sum bounds blocks/s on N
idle cores by N / sum), ``commit_block_us_sqlite`` and
``commit_block_us_file`` (one empty block's commit, alone),
``grid_1e6_seconds``, ``grid_1e6_peak_mib``, ``ledger_1e6_fill_seconds``,
``ledger_1e6_done_blocks_seconds``, ``ledger_1e6_done_blocks_peak_mib``,
``ledger_1e6_rerun_seconds``, ``ledger_1e6_rerun_peak_mib``, and
``load_average_start`` and ``_end`` (other work on the machine slows blocks/s).
Peaks are whole-process peaks (MiB); the ``baseline`` printed beside them is
the same process's peak just before the measured work (imports, client).

Targets: at least 200 no-op blocks/s on 2 cores; driver memory that does not
grow with the number of blocks beyond the ledger (under 300 MiB at 10^6).

Usage::

    python benchmarks/scheduler.py                  # 10^3, 10^4, 10^5 blocks; both stores
    python benchmarks/scheduler.py --quick          # 10^3 and 10^4 (file store: 10^3), 2-3 minutes
    python benchmarks/scheduler.py --max-blocks 10000 --stores sqlite --json figures.json
    python benchmarks/scheduler.py --ledger-only    # the 10^6-block grid and ledger alone
    python benchmarks/scheduler.py --quick --profile /tmp/driver   # cProfile of each driver
    python benchmarks/scheduler.py --quick --driver mymodule:run_stage   # time a replacement loop
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

NOOP_MODULE = "_blockseg_bench_noop"
NOOP_SOURCE = '''
"""Written by benchmarks/scheduler.py: a block function that does nothing."""

from blockseg.graph.base import BlockOutput


def noop(block, **options):
    return BlockOutput()
'''
BLOCK_SHAPE = (10, 10, 10)
STAGE = "noop"
STORES = ("sqlite", "file")
LEDGER_EXPONENT = 6
DRIVER = "blockseg.scheduler:run_stage"


def _peak_mib() -> float:
    """This process's peak resident memory in MiB.

    ``ru_maxrss`` is what is asked for, but Linux carries it over ``execve``
    from the forking parent: a child started by a parent of 120 MiB reports
    at least 120 MiB. ``VmHWM`` (the high-water mark of the process's own
    address space) has no such floor, so it is read where there is one.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process so far, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cluster_cpu_seconds() -> tuple[float, float]:
    """CPU seconds so far of this process (scheduler, nannies) and of its worker processes."""
    import psutil

    me = psutil.Process()
    workers = 0.0
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        workers += times.user + times.system
    return _cpu_seconds(), workers


def _grid_shape(exponent: int) -> tuple[int, int, int]:
    """A grid of 10**exponent blocks, as even as powers of ten allow."""
    powers = [exponent // 3 + (1 if axis < exponent % 3 else 0) for axis in range(3)]
    return tuple(10**p for p in powers)


def _grid(exponent: int):
    from blockseg.blocks import BlockGrid
    from blockseg.geometry import Roi

    shape = tuple(g * b for g, b in zip(_grid_shape(exponent), BLOCK_SHAPE))
    return BlockGrid(Roi((0, 0, 0), shape), BLOCK_SHAPE)


def _open_store(kind: str, path: Path):
    from blockseg.graph import FileGraphStore, SqliteGraphStore

    return SqliteGraphStore(path) if kind == "sqlite" else FileGraphStore(path)


def _store_path(tmp: Path, kind: str, exponent: int) -> Path:
    folder = tmp / f"{kind}-1e{exponent}"
    return folder / "graph.db" if kind == "sqlite" else folder / "graph"


# -- what runs in the child processes ----------------------------------------
def _child_run(spec: dict) -> dict:
    """Drive the no-op stage over one grid, twice; the second run must submit nothing."""
    import functools
    import importlib

    from distributed import Client

    from blockseg.graph.base import StageState

    run_stage = _driver(spec)
    noop = functools.partial(importlib.import_module(NOOP_MODULE).noop)
    grid = _grid(spec["exponent"])
    store = _open_store(spec["store"], Path(spec["path"]))
    # Registered as the pipeline's reset_stage registers it: a worker's commit
    # carries this token, and the file store refuses one that is not the
    # stage's current token (the stale-commit fence), so without it every
    # block of the file-store run failed. It also keeps the fence's read of
    # the stage's state in the timed path, as in a real run.
    token = uuid.uuid4().hex
    store.set_stage_state(STAGE, StageState(f"benchmarks/scheduler.py 1e{spec['exponent']}", token))
    with Client(spec["address"], timeout=60) as client:
        baseline = _peak_mib()
        profiler = _profiler(spec)
        cpu = _cpu_seconds()
        start = time.perf_counter()
        first = run_stage(
            client, STAGE, grid, noop, store, retries=0, window_per_thread=spec["window"], progress=False, token=token
        )
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu
        _dump_profile(profiler, spec)
        peak_first = _peak_mib()
        start = time.perf_counter()
        second = run_stage(
            client, STAGE, grid, noop, store, retries=0, window_per_thread=spec["window"], progress=False, token=token
        )
        rerun_seconds = time.perf_counter() - start
    store.close()
    if first.succeeded != grid.num_blocks:
        raise SystemExit(f"first run: {first.succeeded} of {grid.num_blocks} blocks succeeded")
    return {
        "blocks": grid.num_blocks,
        "seconds": seconds,
        "blocks_per_s": grid.num_blocks / seconds,
        "driver_cpu_seconds": cpu,
        "baseline_mib": baseline,
        "peak_mib": peak_first,
        "rerun_seconds": rerun_seconds,
        "rerun_submitted": second.submitted,
        "rerun_peak_mib": _peak_mib(),
    }


def _driver(spec: dict):
    """``run_stage``, or the drop-in replacement named by ``--driver module:function``."""
    import importlib

    module, _, name = spec.get("driver", DRIVER).partition(":")
    return getattr(importlib.import_module(module), name)


def _child_grid(spec: dict) -> dict:
    """Enumerate every block's write and read ROI of a grid, keeping none of them."""
    grid = _grid(spec["exponent"])
    baseline = _peak_mib()
    start = time.perf_counter()
    voxels = 0
    for block_id in range(grid.num_blocks):
        write_roi = grid.write_roi(block_id)
        read_roi = grid.read_roi(block_id)
        voxels += write_roi.shape[0] + read_roi.shape[0]
    seconds = time.perf_counter() - start
    assert voxels == 2 * BLOCK_SHAPE[0] * grid.num_blocks
    return {"blocks": grid.num_blocks, "seconds": seconds, "baseline_mib": baseline, "peak_mib": _peak_mib()}


def _child_ledger(spec: dict) -> dict:
    """Look the ledger up, then resume the stage from it: nothing may be submitted."""
    import functools
    import importlib

    from distributed import Client

    run_stage = _driver(spec)
    grid = _grid(spec["exponent"])
    store = _open_store("sqlite", Path(spec["path"]))
    baseline = _peak_mib()
    start = time.perf_counter()
    done = store.done_blocks(STAGE)
    lookup_seconds = time.perf_counter() - start
    lookup_peak = _peak_mib()
    if len(done) != grid.num_blocks:
        raise SystemExit(f"ledger holds {len(done)} done marks, expected {grid.num_blocks}")
    del done
    noop = functools.partial(importlib.import_module(NOOP_MODULE).noop)
    with Client(spec["address"], timeout=60) as client:
        client_baseline = _peak_mib()
        start = time.perf_counter()
        report = run_stage(client, STAGE, grid, noop, store, retries=0, window_per_thread=spec["window"], progress=False)
        rerun_seconds = time.perf_counter() - start
    store.close()
    return {
        "blocks": grid.num_blocks,
        "baseline_mib": baseline,
        "done_blocks_seconds": lookup_seconds,
        "done_blocks_peak_mib": lookup_peak,
        "client_baseline_mib": client_baseline,
        "rerun_seconds": rerun_seconds,
        "rerun_submitted": report.submitted,
        "rerun_skipped": report.skipped,
        "rerun_peak_mib": _peak_mib(),
    }


def _profiler(spec: dict):
    if not spec.get("profile"):
        return None
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def _dump_profile(profiler, spec: dict) -> None:
    if profiler is None:
        return
    import pstats

    profiler.disable()
    path = f"{spec['profile']}-{spec['store']}-1e{spec['exponent']}.prof"
    profiler.dump_stats(path)
    with open(f"{path}.txt", "w") as stream:
        stats = pstats.Stats(profiler, stream=stream).sort_stats("tottime")
        stats.print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)


CHILDREN = {"run": _child_run, "grid": _child_grid, "ledger": _child_ledger}


def _in_child(spec: dict, timeout: float) -> dict:
    """Run one measurement in a fresh Python, so that its peak memory is its own.

    It inherits ``PYTHONPATH`` with the no-op module's folder from :func:`main`.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"measurement {spec['what']} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- what runs in the parent -------------------------------------------------
def _commit_cost_us(tmp: Path, kind: str, count: int = 2000) -> float:
    """Microseconds per ``commit_block`` of an empty output, outside any cluster."""
    from blockseg.graph.base import BlockOutput

    store = _open_store(kind, tmp / f"commit-{kind}" / ("graph.db" if kind == "sqlite" else "graph"))
    output = BlockOutput()
    start = time.perf_counter()
    for block_id in range(count):
        store.commit_block(STAGE, block_id, output)
    seconds = time.perf_counter() - start
    store.close()
    return seconds / count * 1e6


def _fill_ledger(path: Path, count: int) -> float:
    """Write ``count`` done marks of the stage in one transaction; seconds taken."""
    _open_store("sqlite", path).close()  # creates the schema
    start = time.perf_counter()
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    db.executemany("INSERT INTO done (stage, block) VALUES (?, ?)", ((STAGE, b) for b in range(count)))
    db.execute("COMMIT")
    db.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="10^3 and 10^4 blocks only (the file store 10^3 only), 2-3 minutes")
    parser.add_argument("--max-blocks", type=int, default=10**5, help="largest grid run (a power of ten)")
    parser.add_argument("--stores", default="sqlite,file", help="comma-separated: sqlite, file")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--window-per-thread", type=int, default=8, help="blocks in flight per worker thread (blockseg's default)")
    parser.add_argument("--no-ledger", action="store_true", help="skip the 10^6-block grid and ledger")
    parser.add_argument("--ledger-only", action="store_true", help="only the 10^6-block grid and ledger")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to each measurement")
    parser.add_argument("--driver", default=DRIVER,
                        help="module:function with run_stage's signature, to time a replacement (default %(default)s)")
    parser.add_argument("--profile", type=Path, help="cProfile each driver run to PROFILE-<store>-1e<n>.prof(.txt)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["what"]](spec)))
        return

    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if set(stores) - set(STORES):
        parser.error(f"--stores: choose among {', '.join(STORES)}")
    largest = min(args.max_blocks, 10**4) if args.quick else args.max_blocks
    exponents = [] if args.ledger_only else [e for e in range(3, 8) if 10**e <= largest]
    if not exponents and not args.ledger_only:
        parser.error("--max-blocks must be at least 1000")

    from distributed import Client, LocalCluster

    figures: dict[str, float] = {"load_average_start": round(os.getloadavg()[0], 2)}
    print(f"{os.cpu_count()} CPU(s), load average {figures['load_average_start']:.1f} (blocks/s needs idle cores)")
    with tempfile.TemporaryDirectory(prefix="blockseg-bench-scheduler-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / f"{NOOP_MODULE}.py").write_text(textwrap.dedent(NOOP_SOURCE))
        # spawned workers inherit both sys.path and the environment, the drivers the environment
        sys.path.insert(0, str(tmp))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp), os.environ.get("PYTHONPATH", "")]))
        for kind in stores:
            figures[f"commit_block_us_{kind}"] = round(_commit_cost_us(tmp, kind), 1)
        print("commit_block of an empty block, alone: "
              + ", ".join(f"{kind} {figures[f'commit_block_us_{kind}']:.0f} us" for kind in stores))

        with LocalCluster(
            n_workers=args.workers, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        ) as cluster, Client(cluster) as client:
            missing = [w for w, ok in client.run(_can_import_noop).items() if not ok]
            if missing:
                raise SystemExit(f"workers {missing} cannot import {NOOP_MODULE} from {tmp}")
            address = cluster.scheduler_address
            if exponents:
                print(f"\n{args.workers} worker(s) x 1 thread, window {args.window_per_thread} per thread, "
                      f"blocks {BLOCK_SHAPE} nm, driver {args.driver}")
                print(f"{'store':<7} {'blocks':>8} {'seconds':>8} {'blocks/s':>9} {'rerun s':>8} {'resubmit':>8} "
                      f"{'driver MiB':>10} {'baseline':>8}  CPU ms/block: driver scheduler workers")
            for kind in stores if exponents else []:
                for exponent in exponents:
                    if args.quick and kind == "file" and exponent > 3:
                        continue
                    spec = {
                        "what": "run", "store": kind, "exponent": exponent, "address": address,
                        "path": str(_store_path(tmp, kind, exponent)), "window": args.window_per_thread,
                        "profile": str(args.profile) if args.profile else None, "driver": args.driver,
                    }
                    cluster_cpu = _cluster_cpu_seconds()
                    result = _in_child(spec, args.timeout)
                    scheduler_cpu, workers_cpu = (b - a for a, b in zip(cluster_cpu, _cluster_cpu_seconds()))
                    per_block = {
                        "driver": result["driver_cpu_seconds"], "scheduler": scheduler_cpu, "workers": workers_cpu,
                    }
                    per_block = {k: v / result["blocks"] * 1e3 for k, v in per_block.items()}
                    suffix = f"1e{exponent}" if kind == "sqlite" else f"file_1e{exponent}"
                    figures[f"noop_blocks_per_s_{suffix}"] = round(result["blocks_per_s"], 1)
                    figures[f"driver_peak_mib_{suffix}"] = round(result["rerun_peak_mib"], 1)
                    figures["driver_baseline_mib"] = round(result["baseline_mib"], 1)
                    figures[f"rerun_seconds_{suffix}"] = round(result["rerun_seconds"], 3)
                    figures[f"rerun_submitted_{suffix}"] = result["rerun_submitted"]
                    for part, value in per_block.items():
                        figures[f"cpu_ms_per_block_{part}_{suffix}"] = round(value, 3)
                    print(f"{kind:<7} {result['blocks']:>8} {result['seconds']:8.1f} {result['blocks_per_s']:9.0f} "
                          f"{result['rerun_seconds']:8.2f} {result['rerun_submitted']:>8} "
                          f"{result['rerun_peak_mib']:10.0f} {result['baseline_mib']:8.0f} "
                          f"{per_block['driver']:21.2f} {per_block['scheduler']:9.2f} {per_block['workers']:7.2f}",
                          flush=True)
            if exponents:
                largest_run = f"1e{exponents[-1]}" if "sqlite" in stores else f"file_1e{exponents[-1]}"
                figures["noop_blocks_per_s"] = figures[f"noop_blocks_per_s_{largest_run}"]

            if not args.no_ledger:
                blocks = 10**LEDGER_EXPONENT
                grid = _in_child({"what": "grid", "exponent": LEDGER_EXPONENT}, args.timeout)
                figures["grid_1e6_seconds"] = round(grid["seconds"], 2)
                figures["grid_1e6_peak_mib"] = round(grid["peak_mib"], 1)
                print(f"\n{blocks} blocks: every write and read ROI enumerated in {grid['seconds']:.1f} s, "
                      f"peak {grid['peak_mib']:.0f} MiB (baseline {grid['baseline_mib']:.0f})")
                path = tmp / f"ledger-1e{LEDGER_EXPONENT}" / "graph.db"
                figures["ledger_1e6_fill_seconds"] = round(_fill_ledger(path, blocks), 2)
                ledger = _in_child(
                    {"what": "ledger", "exponent": LEDGER_EXPONENT, "path": str(path), "address": address,
                     "window": args.window_per_thread, "driver": args.driver},
                    args.timeout,
                )
                figures["ledger_1e6_done_blocks_seconds"] = round(ledger["done_blocks_seconds"], 3)
                figures["ledger_1e6_done_blocks_peak_mib"] = round(ledger["done_blocks_peak_mib"], 1)
                figures["ledger_1e6_rerun_seconds"] = round(ledger["rerun_seconds"], 3)
                figures["ledger_1e6_rerun_peak_mib"] = round(ledger["rerun_peak_mib"], 1)
                figures["ledger_1e6_rerun_submitted"] = ledger["rerun_submitted"]
                print(f"{blocks} done marks written in one transaction in {figures['ledger_1e6_fill_seconds']:.1f} s")
                print(f"store.done_blocks: {ledger['done_blocks_seconds']:.2f} s, "
                      f"peak {ledger['done_blocks_peak_mib']:.0f} MiB (baseline {ledger['baseline_mib']:.0f})")
                print(f"run_stage resuming with all done: {ledger['rerun_seconds']:.2f} s, "
                      f"{ledger['rerun_submitted']} submitted, {ledger['rerun_skipped']} skipped, "
                      f"peak {ledger['rerun_peak_mib']:.0f} MiB (after connecting {ledger['client_baseline_mib']:.0f})")

    figures["load_average_end"] = round(os.getloadavg()[0], 2)
    failed = [key for key, value in figures.items() if "submitted" in key and value]
    if "noop_blocks_per_s" in figures:
        print(f"\nnoop_blocks_per_s {figures['noop_blocks_per_s']:.0f} (target >= 200 on 2 cores)")
    if failed:
        print(f"a second run submitted blocks: {', '.join(failed)}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")
    if failed:
        raise SystemExit(1)


def _can_import_noop() -> bool:
    import importlib

    try:
        importlib.import_module(NOOP_MODULE)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
