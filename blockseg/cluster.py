"""Where blocks run: a local dask cluster (default), a running scheduler, or SLURM.

A local cluster binds to 127.0.0.1 and starts as many single-threaded worker
processes as the machine has cores, because the block functions hold the GIL
in places (waterz, the union-find) and processes scale where threads do not.
A SLURM cluster starts workers as batch jobs through dask-jobqueue and
cancels them when the run ends, however it ends.

Every worker gets :class:`WorkerSetup`: one BLAS/OpenMP thread per worker
thread, logging to the run's log folder, and a check that it runs the same
blockseg as the driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import dask
from distributed import Client, LocalCluster, WorkerPlugin

import blockseg
from blockseg.config import ClusterConfig, ConfigError

log = logging.getLogger("blockseg")

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")

#: glibc's allocator settings for worker processes. distributed's nanny sets
#: MALLOC_TRIM_THRESHOLD_=65536 so that freed memory goes back to the OS at
#: once; setting any threshold also freezes glibc's mmap threshold at 128 KiB,
#: so every array of a block (megabytes each) becomes a fresh mmap whose pages
#: fault in one by one. Measured on a fragments block of the benchmark volume:
#: 53,000 page faults and 0.11 s of system time per block (a third of its
#: time) against 1,800 and 0.015 s with these values. A worker keeps at most
#: 128 MiB of freed heap for its next block.
MALLOC_ENVIRON = {"MALLOC_MMAP_THRESHOLD_": str(64 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(128 * 2**20)}


class VersionMismatch(RuntimeError):
    """A worker runs another blockseg than the driver."""


class WorkerSetup(WorkerPlugin):
    """Prepare each worker: thread limits, a log file, the version check.

    Parameters
    ----------
    version : str
        The driver's blockseg version; a worker with another one refuses to
        start work, since blocks computed by two versions need not agree.
    log_dir : str, optional
        Folder for one log file per worker.
    """

    name = "blockseg-setup"

    def __init__(self, version: str, log_dir: str | None = None) -> None:
        self.version = version
        self.log_dir = log_dir

    def setup(self, worker) -> None:
        import blockseg as worker_blockseg

        if worker_blockseg.__version__ != self.version:
            raise VersionMismatch(
                f"worker {worker.address} runs blockseg {worker_blockseg.__version__}, "
                f"the driver {self.version}: install the same version on every node"
            )
        # Blocks are the unit of parallelism: a BLAS pool per worker thread
        # would only oversubscribe the cores.
        for name in THREAD_VARIABLES:
            os.environ[name] = "1"
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)
        except ImportError:  # threadpoolctl is optional; the variables cover new pools
            pass
        if self.log_dir:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            name = worker.address.replace("://", "-").replace(":", "-").replace("/", "-")
            handler = logging.FileHandler(Path(self.log_dir) / f"worker-{name}.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
            for logger_name in ("blockseg", "distributed"):
                logging.getLogger(logger_name).addHandler(handler)
            # distributed's own errors in a worker (a connection lost while the
            # driver stops or a peer dies, a heartbeat after the scheduler closed)
            # go to that file only: their tracebacks on the terminal said nothing
            # the run's report does not (benchmarks/chaos.py saw 3 in 40 runs)
            for stream_handler in logging.getLogger("distributed").handlers:
                if type(stream_handler) is logging.StreamHandler:
                    stream_handler.setLevel(logging.CRITICAL)


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _register_setup(client: Client, log_dir: Path | None) -> None:
    try:
        client.register_plugin(WorkerSetup(blockseg.__version__, str(log_dir) if log_dir else None))
    except VersionMismatch as error:
        raise ConfigError(f"cluster: {error}") from None


@contextlib.contextmanager
def open_client(config: ClusterConfig, quiet: bool = False, log_dir: Path | None = None) -> Iterator[Client]:
    """Start (or connect to) the cluster described by ``config`` and yield a client.

    The cluster is shut down when the block exits, also on an exception or
    Ctrl-C, so no worker (and no SLURM job) outlives the run.
    """
    if config.kind == "address":
        with _address_client(config, quiet, log_dir) as client:
            yield client
    elif config.kind == "slurm":
        with _slurm_client(config, quiet, log_dir) as client:
            yield client
    else:
        with _local_client(config, quiet, log_dir) as client:
            yield client


@contextlib.contextmanager
def _address_client(config: ClusterConfig, quiet: bool, log_dir: Path | None) -> Iterator[Client]:
    try:
        client = Client(config.address, timeout="10s")
    except (OSError, TimeoutError) as error:
        raise ConfigError(f"cluster.address: cannot reach a dask scheduler at {config.address} ({error})") from None
    try:
        _register_setup(client, log_dir)
        if not quiet:
            log.info("connected to the dask scheduler at %s, dashboard %s", config.address, client.dashboard_link)
        yield client
    finally:
        client.close()


#: Every worker death reaches the driver at once as a KilledWorker; the driver
#: counts it against the block's ``retries`` (dask's default, 3, would let one
#: bad block kill 4 workers per attempt).
DEATH_CONFIG = {"distributed.scheduler.allowed-failures": 0}
#: A local cluster never gives up on a worker its nanny is restarting: by
#: default it closes a nanny whose worker is gone 15 s after *any* earlier
#: death of that worker, which a block that keeps killing its worker hits at
#: random, leaving no worker and the run waiting forever.
LOCAL_CONFIG = {**DEATH_CONFIG, "distributed.deploy.lost-worker-timeout": "3650 days"}


@contextlib.contextmanager
def _local_client(config: ClusterConfig, quiet: bool, log_dir: Path | None) -> Iterator[Client]:
    # set for the cluster's whole life: the scheduler reads allowed-failures
    # when it starts, the cluster reads lost-worker-timeout at each death
    with dask.config.set(LOCAL_CONFIG), _allocator_environ():
        with _local_client_configured(config, quiet, log_dir) as client:
            yield client


@contextlib.contextmanager
def _allocator_environ() -> Iterator[None]:
    """:data:`MALLOC_ENVIRON` in this process's environment while local workers spawn.

    A nanny gives its worker the driver's environment, and where a variable
    of its ``pre-spawn-environ`` defaults is already set there the driver's
    value wins; so this is all a local worker needs. Set for the cluster's
    whole life (a nanny restarts dead workers) and restored after: a nanny
    also copies its defaults into the driver's environment when it spawns.
    """
    saved = {name: os.environ.get(name) for name in MALLOC_ENVIRON}
    os.environ.update(MALLOC_ENVIRON)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


#: Tries to bring a local cluster up when a worker dies while it starts.
START_ATTEMPTS = 3


def _start_local(config: ClusterConfig, log_dir: Path | None) -> tuple[LocalCluster, Client]:
    """A local cluster and its client, with the worker setup registered.

    A worker that dies while the cluster starts (killed from outside, out of
    memory) fails the nanny's start ("Nanny failed to start") or the setup's
    registration (CommClosedError); nothing has run yet, so the cluster is
    started again, up to :data:`START_ATTEMPTS` times, and then the run ends
    with one line (:class:`~blockseg.scheduler.NoWorkers`) instead of
    distributed's traceback.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        cluster = client = None
        try:
            cluster = _new_local_cluster(config)
            client = Client(cluster)
            _register_setup(client, log_dir)
            return cluster, client
        except (RuntimeError, OSError) as error:
            _close_quietly(client, cluster)
            line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            log.debug("local cluster start, attempt %d of %d", attempt, START_ATTEMPTS, exc_info=True)
            if attempt == START_ATTEMPTS:
                from blockseg.scheduler import NoWorkers

                raise NoWorkers(
                    f"the local dask cluster did not start in {START_ATTEMPTS} tries ({line}); "
                    "a worker died while it started: check the memory limit, then rerun to resume"
                ) from error
            log.warning("a dask worker died while the local cluster started (%s); starting it again", line)
        except BaseException:
            _close_quietly(client, cluster)
            raise
    raise AssertionError("unreachable")


def _close_quietly(client: Client | None, cluster: LocalCluster | None) -> None:
    for thing in (client, cluster):
        if thing is not None:
            with contextlib.suppress(Exception):
                thing.close()


def _new_local_cluster(config: ClusterConfig) -> LocalCluster:
    local = config.local
    return LocalCluster(
        n_workers=local.workers or default_workers(),
        threads_per_worker=local.threads_per_worker,
        processes=local.processes,
        memory_limit=local.memory_limit,
        host="127.0.0.1",
        # threads in this process would default to dask's in-process transport,
        # whose addresses a host cannot be given
        protocol="tcp://",
        # the dashboard always binds to loopback; "dashboard: false" only hides the link
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    )


@contextlib.contextmanager
def _local_client_configured(config: ClusterConfig, quiet: bool, log_dir: Path | None) -> Iterator[Client]:
    local = config.local
    workers = local.workers or default_workers()
    cluster, client = _start_local(config, log_dir)
    try:
        if not quiet:
            link = cluster.dashboard_link if local.dashboard else "off"
            log.info("local dask cluster: %d worker(s) x %d thread(s), dashboard %s", workers, local.threads_per_worker, link)
        yield client
    finally:
        client.close()
        cluster.close()


def slurm_cluster_kwargs(config: ClusterConfig, log_dir: Path | None = None) -> dict:
    """The ``SLURMCluster`` arguments of a ``cluster.slurm`` section.

    Job output goes to ``log_dir`` (the run's log folder) unless the section
    names a ``log_directory``; otherwise sbatch would drop ``slurm-*.out``
    files wherever the driver was started.
    """
    slurm = config.slurm
    assert slurm is not None
    host = slurm.scheduler_host
    kwargs: dict = {
        "cores": slurm.cores,
        "processes": slurm.processes,
        "memory": slurm.memory,
        "walltime": slurm.walltime,
        "job_extra_directives": list(slurm.job_extra_directives),
        "job_script_prologue": list(slurm.job_script_prologue)
        + [f"export {name}=1" for name in THREAD_VARIABLES]
        # the job's environment wins over the nanny's own default (see MALLOC_ENVIRON)
        + [f"export {name}={value}" for name, value in MALLOC_ENVIRON.items()],
        "python": slurm.python or sys.executable,
        "scheduler_options": {"host": host, "dashboard_address": f"{host}:0"},
    }
    for key in ("queue", "account", "interface", "local_directory", "log_directory"):
        value = getattr(slurm, key)
        if value is not None:
            kwargs[key] = value
    if slurm.log_directory is None and log_dir is not None:
        kwargs["log_directory"] = str(log_dir / "slurm")
    # a worker's dashboard binds to every interface unless told otherwise
    extra = ["--dashboard-address", f"{host}:0"]
    configured_interface = dask.config.get("jobqueue.slurm.interface", None)
    if slurm.interface is None and configured_interface is None and host in ("127.0.0.1", "localhost"):
        # one node: keep the workers on loopback too (--host and --interface
        # together stop a worker from starting, hence the check)
        extra += ["--host", "127.0.0.1"]
    if slurm.resources:
        extra += ["--resources", ",".join(f"{k}={v:g}" for k, v in slurm.resources.items())]
    kwargs["worker_extra_args"] = extra
    return kwargs


def _check_job_script(cluster) -> None:
    """Ask sbatch whether it would accept a worker job, before waiting for workers that never come."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as handle:
        handle.write(cluster.job_script())
        path = handle.name
    try:
        result = subprocess.run(["sbatch", "--test-only", path], capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(path)
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise ConfigError(f"cluster.slurm: sbatch refuses the worker job: {reason[-1] if reason else 'no reason given'}")


@contextlib.contextmanager
def _slurm_client(config: ClusterConfig, quiet: bool, log_dir: Path | None) -> Iterator[Client]:
    if shutil.which("sbatch") is None:
        raise ConfigError("cluster.slurm: sbatch is not on this machine's PATH; run blockseg where SLURM is installed")
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ConfigError("cluster.slurm: dask-jobqueue is not installed (pip install dask-jobqueue)") from None
    slurm = config.slurm
    assert slurm is not None
    with dask.config.set(DEATH_CONFIG):  # read by the scheduler SLURMCluster starts here
        cluster = SLURMCluster(**slurm_cluster_kwargs(config, log_dir))
    client = None
    try:
        _check_job_script(cluster)
        if slurm.adaptive is not None:
            cluster.adapt(minimum_jobs=slurm.adaptive.minimum, maximum_jobs=slurm.adaptive.maximum)
        else:
            cluster.scale(jobs=slurm.jobs or 1)
        client = Client(cluster)
        if slurm.adaptive is None:
            client.wait_for_workers(1, timeout=600)
        _register_setup(client, log_dir)
        if not quiet:
            jobs = sorted(str(getattr(job, "job_id", "?")) for job in cluster.workers.values())
            log.info("SLURM cluster: dashboard %s, job(s) %s", cluster.dashboard_link, ", ".join(jobs) or "pending")
        yield client
    finally:
        if client is not None:
            client.close()
        # cancels every worker job (scancel), also after Ctrl-C or an error
        cluster.close()
