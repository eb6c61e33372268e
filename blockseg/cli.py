"""``blockseg run | status | evaluate | demo``.

Exit codes: 0 success, 1 some blocks failed or the storage failed (no
space left, quota, permissions: one line on stderr), 2 a bad config or input
(one line on stderr, nothing written), 130 interrupted, 141 stdout closed
early by its reader (``blockseg status CONFIG | head -1``: nothing on
stderr, as a Unix tool killed by SIGPIPE).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

from blockseg import __version__

log = logging.getLogger("blockseg")
#: the exit code when stdout's reader went away: what a shell reports for a tool killed by SIGPIPE
STDOUT_CLOSED = 128 + signal.SIGPIPE
#: what the console shows: logging.WARNING with --quiet, INFO, DEBUG with --verbose
_console_level = logging.INFO


class _LogFile(logging.FileHandler):
    """The run's log file, given up quietly once its disk is full (or its quota spent).

    The standard handler prints a "Logging error" traceback to stderr for
    every line it cannot write: on a full disk that would bury the one line
    in which the run reports the problem itself.
    """

    given_up = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.given_up:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        from blockseg.stage_errors import resource_problem

        error = sys.exc_info()[1]
        if error is None or resource_problem(error) is None:
            super().handleError(record)
            return
        self.given_up = True
        stream, self.stream = self.stream, None
        try:  # what is still buffered cannot be written either
            if stream is not None:
                stream.close()
        except OSError:
            pass


def _setup_logging(log_dir: Path | None, verbose: bool = False) -> None:
    from blockseg.terminal import BarAwareHandler

    log.setLevel(logging.DEBUG)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    # The run's narrative goes to stdout; stderr carries only warnings and
    # errors (and progress bars), so a failure reads as the one line it is.
    # each line once: through the bar-aware handler, which clears a progress bar before it writes
    narrative = BarAwareHandler(sys.stdout)
    narrative.setLevel(logging.DEBUG if verbose else _console_level)
    narrative.addFilter(lambda record: record.levelno < logging.WARNING)
    narrative.setFormatter(logging.Formatter("blockseg: %(message)s"))
    log.addHandler(narrative)
    problems = logging.StreamHandler(sys.stderr)
    problems.setLevel(logging.WARNING)
    problems.setFormatter(logging.Formatter("blockseg: %(levelname)s: %(message)s"))
    log.addHandler(problems)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = _LogFile(log_dir / "blockseg.log")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(file_handler)


def _parse_stages(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def _apply_overrides(config, args: argparse.Namespace):
    if getattr(args, "workers", None):
        config.cluster.local.workers = args.workers
    if getattr(args, "no_progress", False) or getattr(args, "quiet", False):
        config.scheduler.progress = False
    return config


def format_scores(scores: dict) -> str:
    """A table of VOI and Rand errors per threshold."""
    lines = [f"{'threshold':>10} {'voi_split':>10} {'voi_merge':>10} {'voi_sum':>10} {'rand_split':>10} {'rand_merge':>10}"]
    rows = [("fragments", scores["fragments"])] + list(scores["thresholds"].items())
    for name, s in rows:
        lines.append(
            f"{name:>10} {s['voi_split']:10.4f} {s['voi_merge']:10.4f} {s['voi_sum']:10.4f} "
            f"{s['rand_split']:10.4f} {s['rand_merge']:10.4f}"
        )
    best = scores["best"]
    lines.append(f"best threshold {best['threshold']!r}: VOI sum {best['voi_sum']:.4f}")
    return "\n".join(lines)


def _run(config, stages: Sequence[str] | None, restart: bool, report_config: Path | None = None) -> int:
    """Run ``stages`` of ``config``; with ``report_config`` (the YAML's path) write report.html after it."""
    from blockseg.lock import OutputLock
    from blockseg.refusal import NewPaths, refusals, run_paths
    from blockseg.scheduler import StageFailed

    # what the run may create, noted before it exists (a bad graph URL is refused right here)
    created = NewPaths(run_paths(config))
    state: dict = {}
    try:
        # One run per output, taken before anything touches the store; a second
        # run (or a --restart) is refused in one line naming the holder.
        with OutputLock(config.output_dir, command=" ".join(["blockseg", *sys.argv[1:2]])):
            code = _run_locked(config, stages, restart, state)
    except refusals() as refused:
        from blockseg.lock import OutputLocked

        run = state.get("run")
        if isinstance(refused, OutputLocked):
            raise  # the output is another run's: nothing here is ours to remove
        if run is None or not any(r.succeeded for name, r in run.reports.items() if name != "check"):
            # refused before any block was done: leave no empty folder or store behind
            _setup_logging(None)  # closes the log file first
            created.undo_unless_running(config.output_dir)
        raise
    except StageFailed:
        if report_config is not None:
            _write_report(config, report_config)  # the failed blocks and their reasons
        raise
    if report_config is not None:
        _write_report(config, report_config)
    return code


def _write_report(config, config_path: Path) -> None:
    from blockseg.report import write_report

    print(f"report: {write_report(config, config_path)}")


def _shown(key: str, value) -> str:
    """A fragments setting as the terminal says it: lengths with their unit, numbers without a needless .0."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"{value:g} nm" if key in ("smooth_sigma", "min_seed_distance") else f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:g}" for v in value) + "] nm"
    return str(value)


def _run_locked(config, stages: Sequence[str] | None, restart: bool, state: dict | None = None) -> int:
    from blockseg.cluster import open_client
    from blockseg.pipeline import open_run, run_pipeline
    from blockseg.report import record_stages

    run = open_run(config, restart=restart)
    if state is not None:
        state["run"] = run
    _setup_logging(config.output_dir / "logs")
    where = "" if config.graph else " (the default: inside the output folder)"
    log.info("output %s; graph store %s%s", config.output_dir, config.graph_url, where)
    if run.data_defaults and run.fragment_stage == "fragments":
        chosen = ", ".join(f"{key} {_shown(key, value)}" for key, value in run.data_defaults.items())
        voxel_size = " x ".join(str(v) for v in run.voxel_size)
        log.info("fragments, chosen from the input and its voxel size (%s nm): %s", voxel_size, chosen)
    scheduler = config.scheduler
    log.debug(
        "log file %s; cluster %s; volumes %s; retries %d, %d block(s) in flight per thread, block timeout %s",
        config.output_dir / "logs" / "blockseg.log", config.cluster.kind, config.volumes_url, scheduler.retries,
        scheduler.window_per_thread, f"{scheduler.block_timeout:g} s" if scheduler.block_timeout else "none",
    )
    start = time.perf_counter()
    failed = None
    try:
        with open_client(config.cluster, log_dir=config.output_dir / "logs") as client:
            from blockseg.memory import check_block_memory
            from blockseg.pipeline import select_stages

            # before any block runs: a block that cannot fit a worker would only kill it, retry after retry
            check_block_memory(run, select_stages(run, stages), client)
            run_pipeline(run, client, stages=stages, restart=restart)
    except Exception as error:
        failed = getattr(error, "report", None)  # StageFailed carries the failed stage's report
        raise
    finally:
        run.store.close()
        # each stage's blocks and seconds, for blockseg report (the stage lines were logged as they ended)
        record_stages(run, failed)
    if run.scores is not None:
        if _console_level <= logging.INFO:
            print(format_scores(run.scores))
        from blockseg.plots import write_scores_png

        png = write_scores_png(run.scores, config.output_dir)  # None (and a warning) without matplotlib
        print(f"scores: {config.output_dir / 'scores.json'}" + (f", {png}" if png else ""))
    print(f"outputs: {config.volumes_url} (fragments, segmentation/threshold_*), "
          f"graph: {config.graph_url}, in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from blockseg.config import load_config

    config = _apply_overrides(load_config(args.config), args)
    return _run(config, _parse_stages(args.stages), args.restart, Path(args.config) if args.report else None)


def cmd_status(args: argparse.Namespace) -> int:
    from blockseg.config import load_config
    from blockseg.pipeline import open_run, stage_progress
    from blockseg.registry import stages_of

    config = load_config(args.config)
    from blockseg.lock import status_line

    active = status_line(config.output_dir)
    if active:
        print(active)
    from blockseg.refusal import NewPaths, run_paths

    # a status query leaves no folder or store behind (opening the run creates them for one never started)
    created = NewPaths(run_paths(config))
    run = None
    try:
        run = open_run(config)
        print(f"{'stage':<24} {'done':>8} {'total':>8}  state")
        for name, stage in stages_of(run).items():  # the built-in stages, then the users' tasks
            if not stage.enabled(run):
                print(f"{name:<24} {'-':>8} {'-':>8}  disabled")
                continue
            done, total, current = stage_progress(run, stage)
            state = "complete" if current and done == total else ("partial" if current and done else "not started")
            if not current and run.store.stage_state(name) is not None:
                state = "stale (inputs, parameters or outputs changed): reruns from scratch"
            failed_file = config.output_dir / "logs" / f"failed-{name}.json"
            if failed_file.exists():
                import json

                failed = json.loads(failed_file.read_text())
                ids = ", ".join(str(f["block_id"]) for f in failed[:20]) + (" ..." if len(failed) > 20 else "")
                state += f"; {len(failed)} block(s) FAILED in the last run: {ids} (details: {failed_file})"
            print(f"{name:<24} {done:>8} {total:>8}  {state}")
    finally:
        if run is not None:
            run.store.close()
        created.undo_unless_running(config.output_dir)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from blockseg.config import load_config

    config = _apply_overrides(load_config(args.config), args)
    if not config.input.ground_truth:
        from blockseg.config import ConfigError

        raise ConfigError("config error: input.ground_truth: required by evaluate")
    iou_thresholds = None
    if args.matching is not None:
        from blockseg.config import ConfigError
        from blockseg.evaluate import check_thresholds

        try:  # checked before the run, so a typo costs nothing
            iou_thresholds = check_thresholds(args.matching)
        except ValueError as error:
            raise ConfigError(f"--matching: {error}") from None
    code = _run(config, ["evaluate"], restart=False)
    if iou_thresholds is not None:
        import json

        from blockseg.evaluate import format_matching, matching_of_run
        from blockseg.pipeline import open_run

        # from the stored contingency tables, node sizes and LUTs: no pass over the volume
        run = open_run(config)
        try:
            table = matching_of_run(run, iou_thresholds)
        finally:
            run.store.close()
        path = Path(args.matching_json) if args.matching_json else config.output_dir / "matching.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        from blockseg.stage_errors import naming

        with naming(path):  # a full disk fails the write, which names no file
            path.write_text(json.dumps(table, indent=2))
        print(format_matching(table))
        print(f"matching: {path}")
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    from blockseg.config import load_config
    from blockseg.demo import write_demo_config, write_demo_inputs

    folder = Path(args.out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if not args.quiet:
        print(f"writing a synthetic volume {tuple(args.shape)} with ground truth and affinities to {folder / 'input.zarr'}")
    write_demo_inputs(folder, shape=args.shape, seed=args.seed)
    path = write_demo_config(folder)
    config = _apply_overrides(load_config(path), args)
    code = _run(config, None, restart=args.restart, report_config=path if args.report else None)
    print(f"config: {path}\nlook at it in napari: see README.md, 'Looking at the result'")
    return code


def cmd_report(args: argparse.Namespace) -> int:
    from blockseg.config import load_config
    from blockseg.refusal import NewPaths, refusals, run_paths

    config = load_config(args.config)
    created = NewPaths(run_paths(config))  # a report never creates a run's folder or store
    try:
        _write_report(config, Path(args.config))
    except refusals():
        created.undo_unless_running(config.output_dir)
        raise
    return 0


def cmd_graph_export(args: argparse.Namespace) -> int:
    from blockseg.config import ConfigError, load_config
    from blockseg.geometry import Roi
    from blockseg.graph import open_store
    from blockseg.graph.export import export_graph

    config = load_config(args.config)
    roi = None
    if args.roi:
        try:
            roi = Roi(args.roi[:3], args.roi[3:])
        except ValueError as error:
            raise ConfigError(f"--roi: {error}") from None
    from blockseg.refusal import NewPaths, graph_paths

    created = NewPaths(graph_paths(config.graph_url))  # no empty store for a run that never started
    store = open_store(config.graph_url)
    try:
        output = Path(args.output or f"graph.{args.format}")
        nodes, edges = export_graph(store, roi, args.format, output)
    finally:
        store.close()
        created.undo_unless_running(config.output_dir)
    print(f"wrote {nodes} node(s) and {edges} edge(s) to {output}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from blockseg.config import ConfigError, load_config
    from blockseg.view import NEUROGLANCER_URL, view

    config = load_config(args.config)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: {args.port} is outside 0..65535 (0 picks a free port)")
    viewer_url = NEUROGLANCER_URL if args.public else args.neuroglancer  # None: the client served beside the data
    request_log = Path(args.request_log) if args.request_log else None
    return view(config, port=args.port, open_browser=not args.no_browser, viewer_url=viewer_url, request_log=request_log)


def cmd_tune(args: argparse.Namespace) -> int:
    from blockseg.tune import main as tune_main

    return tune_main(args)


def cmd_tasks(args: argparse.Namespace) -> int:
    from blockseg.task_listing import describe_tasks

    print(describe_tasks())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blockseg", description="Blockwise segmentation of large EM volumes on dask.")
    parser.add_argument("--version", action="version", version=f"blockseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        loudness = p.add_mutually_exclusive_group()
        loudness.add_argument("--quiet", "-q", action="store_true",
                              help="no stage lines or progress bars: warnings, errors and where the results are")
        loudness.add_argument("--verbose", "-v", action="store_true",
                              help="also the debug lines (the tracebacks of retried blocks, ...)")

    run = sub.add_parser("run", help="run the pipeline of a config (resumes where it stopped)")
    run.add_argument("config", help="pipeline YAML")
    run.add_argument("--stages", help=f"comma-separated subset of stages to run")
    run.add_argument("--restart", action="store_true", help="redo the chosen stages from scratch")
    run.add_argument("--report", action="store_true", help="write OUTPUT/report.html at the end (see blockseg report)")
    common(run)
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="done/total blocks per stage")
    status.add_argument("config")
    status.set_defaults(func=cmd_status)

    evaluate = sub.add_parser("evaluate", help="VOI and Rand scores per threshold against the ground truth")
    evaluate.add_argument("config")
    evaluate.add_argument("--matching", type=float, nargs="+", metavar="IOU",
                          help="also instance matching (StarDist/BiaPy: precision, recall, F1, PQ, ...) "
                          "at these IoU thresholds, e.g. 0.5 0.75")
    evaluate.add_argument("--matching-json", metavar="PATH",
                          help="where the full matching table goes (default: OUTPUT/matching.json)")
    common(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    graph = sub.add_parser("graph", help="inspect the RAG of a run")
    graph_sub = graph.add_subparsers(dest="graph_command", required=True)
    export = graph_sub.add_parser("export", help="write the nodes in a ROI and their edges as GraphML or npz")
    export.add_argument("config")
    export.add_argument("--roi", type=int, nargs=6, metavar=("OZ", "OY", "OX", "SZ", "SY", "SX"),
                        help="offset and shape in nm (default: everything)")
    export.add_argument("--format", choices=("graphml", "npz"), default="graphml")
    export.add_argument("--output", "-o", help="file to write (default: graph.<format>)")
    export.set_defaults(func=cmd_graph_export)

    demo = sub.add_parser("demo", help="synthetic volume + the embedded default pipeline")
    demo.add_argument("out", nargs="?", default="blockseg-demo", help="folder for inputs and outputs")
    demo.add_argument("--shape", type=int, nargs=3, default=[64, 192, 192], metavar=("Z", "Y", "X"))
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--restart", action="store_true")
    demo.add_argument("--report", action="store_true", help="write OUTPUT/report.html at the end (see blockseg report)")
    common(demo)
    demo.set_defaults(func=cmd_demo)

    report = sub.add_parser("report", help="one self-contained OUTPUT/report.html: stages, failures, scores, config, view")
    report.add_argument("config")
    report.set_defaults(func=cmd_report)

    view = sub.add_parser("view", help="serve the outputs on 127.0.0.1; print a neuroglancer link and a napari command")
    view.add_argument("config")
    view.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    view.add_argument("--no-browser", action="store_true", help="only print the link")
    where = view.add_mutually_exclusive_group()
    where.add_argument("--public", action="store_true",
                       help="link to the public neuroglancer site instead of the client served on 127.0.0.1")
    where.add_argument("--neuroglancer", metavar="URL",
                       help="another neuroglancer to link to (default: the client served beside the data)")
    view.add_argument("--request-log", metavar="FILE", help="append every request the server answers to FILE")
    view.set_defaults(func=cmd_view)

    tune = sub.add_parser("tune", help="every combination of a parameter grid on a ROI with ground truth; "
                          "writes the best as CONFIG.tuned.yaml")
    from blockseg.tune import add_arguments as tune_arguments

    tune_arguments(tune)
    tune.set_defaults(func=cmd_tune)

    tasks = sub.add_parser("tasks", help="the built-in stages and installed tasks, with their parameters and defaults")
    tasks.set_defaults(func=cmd_tasks)
    return parser


def _driver_resource_problem(error: BaseException, resource_problem) -> str | None:
    """One line for a storage error raised in the driver: an OSError, or SQLite's own words for it.

    The SQLite error may be the cause of the one raised (a failed commit's
    rollback fails in turn), so the chain is read as ``resource_problem`` reads it.
    """
    problem = resource_problem(error)
    if problem is None:
        import sqlite3

        seen = set()
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            if isinstance(error, sqlite3.OperationalError) and "disk is full" in str(error):
                return "no space left on device: the graph store (sqlite: database or disk is full)"
            error = error.__cause__ or error.__context__
    return problem


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``blockseg`` command ``argv`` (default: the process's arguments); return its exit code.

    A stdout closed early by its reader (``blockseg status CONFIG | head -1``)
    ends any command quietly with :data:`STDOUT_CLOSED`, whatever was
    printing: no traceback, and no second ``BrokenPipeError`` from the
    interpreter's flush at exit (stdout is pointed at the null device).
    """
    from blockseg.terminal import silence_stdout, stdout_reader_gone, stdout_silenced

    try:
        try:
            code = _main(argv)
        finally:
            # what print() left in the buffer meets a closed pipe here, inside the try,
            # not in the interpreter's last flush (an "Exception ignored" message)
            sys.stdout.flush()
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise  # another pipe or socket broke: a real failure
        silence_stdout()
        return STDOUT_CLOSED
    # a log line of a block thread found stdout closed and dropped the rest quietly
    return STDOUT_CLOSED if stdout_silenced() else code


def _main(argv: Sequence[str] | None) -> int:
    from blockseg.config import ConfigError
    from blockseg.graph import StoreError
    from blockseg.pipeline import InputError
    from blockseg.scheduler import NoWorkers, ResourceError, StageFailed, resource_problem
    from blockseg.volume import VolumeError

    args = build_parser().parse_args(argv)
    global _console_level
    _console_level = logging.WARNING if getattr(args, "quiet", False) else (
        logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    )
    _setup_logging(None)
    try:
        return args.func(args)
    except (ConfigError, InputError, VolumeError, StoreError) as error:
        print(f"blockseg: {error}", file=sys.stderr)
        return 2
    except StageFailed as error:
        print(f"blockseg: {error}", file=sys.stderr)
        return 1
    except NoWorkers as error:
        log.debug("no usable worker", exc_info=True)
        print(f"blockseg: {error}", file=sys.stderr)
        return 1
    except ResourceError as error:
        print(f"blockseg: {error} (tracebacks: the output's logs/blockseg.log)", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - only storage problems are one line; the rest re-raises
        problem = _driver_resource_problem(error, resource_problem)
        if problem is None:
            raise
        # the driver itself could not write (the graph store, a lookup table, the logs)
        log.debug("resource error in the driver", exc_info=True)
        print(f"blockseg: {problem}; the rerun resumes once that is fixed", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("blockseg: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
