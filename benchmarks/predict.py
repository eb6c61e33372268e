"""Throughput and peak memory of the predict stage on the CPU, blockwise against whole-volume.

A small TorchScript 3D conv net (four valid 3 x 3 x 3 convolutions, 16
channels, ReLU, 1 -> 3 channels and a sigmoid; fixed random weights from
``torch.manual_seed(0)``; 4 voxels of context per side) predicts affinities
from a synthetic raw volume twice:

* **whole**: in one process on one thread (``torch.set_num_threads(1)``,
  like one single-threaded dask worker), with
  :func:`workers.predict.predict_volume` on the whole normalised volume
  zero-padded by the context: the same windows a blockwise run uses.
* **blockwise**: the pipeline's predict stage on a local dask cluster of
  ``--workers`` single-threaded workers, reading raw from and writing the
  affinities to zarr.

Prints the throughput of each (Mvoxel/s; per worker for the blockwise run,
whose time is the stage's wall time), their ratio (the blockwise efficiency),
the peak resident memory of the busiest worker (``ru_maxrss``, with the
worker's own high-water mark ``VmHWM`` beside it as a check), how many
threads torch uses inside a worker, the largest difference between the two
predictions (they must agree within 1e-5, else the script exits non-zero),
and where one block's time goes on a worker (reading zarr, normalising, the
model, the rest of the window loop, writing; system time and page faults).
With ``--json PATH`` the same figures are written as one flat JSON object
(``blockwise_mvox_per_s_per_worker``, ``whole_mvox_per_s``,
``blockwise_peak_mib``, ``blockwise_efficiency``, ...).

The whole-volume time counts normalising, padding and predicting, not reading
the raw from zarr; the blockwise time counts everything the stage does,
including importing torch and loading the model on every worker but the one
the stage probes the model on before its clock starts. CPU seconds (whole,
and summed over the workers) are printed too: on a machine busy with other
work they judge the efficiency better than wall-clock time does.

Two switches measure remedies without editing blockseg: ``--warm-workers``
loads the model on every worker before the stage, and ``--no-malloc-trim``
starts the workers without the ``MALLOC_TRIM_THRESHOLD_=65536`` that dask's
nannies set (which makes glibc hand every large torch buffer back to the
kernel and fault it in again on the next window).

Usage::

    python benchmarks/predict.py                 # 64 x 512 x 512, blocks 32 x 128 x 128
    python benchmarks/predict.py --quick         # 32 x 256 x 256, blocks 32 x 128 x 128
    python benchmarks/predict.py --workers 2 --json figures.json
    python benchmarks/predict.py --quick --warm-workers --no-malloc-trim
    python benchmarks/predict.py --window 16 64 64   # another output window (context stays 4)
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import math
import multiprocessing
import os
import pstats
import resource
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

# Valid 3 x 3 x 3 convolutions: each one eats one voxel per side.
CONV_LAYERS = 4
FEATURES = 16
CONTEXT = CONV_LAYERS
OUT_CHANNELS = 3
TOLERANCE = 1e-5


def _peak_mib() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _high_water_mib() -> float:
    """Peak RSS of this process's own memory (VmHWM).

    A process's ``ru_maxrss`` starts at the RSS of the process that forked
    it (local dask workers are forked from the driver), ``VmHWM`` does not.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds() -> float:
    """CPU time of this process so far (user + system, all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _torch_threads() -> dict:
    """What torch runs on inside this process (asked of the workers after the stage)."""
    import torch

    return {
        "intra_op": torch.get_num_threads(),
        "inter_op": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
    }


def _child(function, *args):
    """Run ``function(*args)`` in a fresh process and return its result.

    The driver stays small this way: workers forked from it would inherit
    its RSS in their ``ru_maxrss``.
    """
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _write_inputs(folder: str, shape: tuple[int, ...]) -> str:
    """The synthetic raw (with the demo's labels and affinities, unused here); its URL."""
    from blockseg.demo import write_demo_inputs

    return str(Path(write_demo_inputs(Path(folder), shape=shape, seed=0)) / "raw")


def _save_model(path: Path) -> None:
    """The benchmark's network as a TorchScript file, with fixed random weights."""
    import torch

    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    channels = 1
    for _ in range(CONV_LAYERS - 1):
        layers += [torch.nn.Conv3d(channels, FEATURES, 3), torch.nn.ReLU()]
        channels = FEATURES
    layers += [torch.nn.Conv3d(channels, OUT_CHANNELS, 3), torch.nn.Sigmoid()]
    network = torch.nn.Sequential(*layers).eval()
    with warnings.catch_warnings():
        # torch >= 2.10 flags TorchScript as deprecated; it is the format the plugin reads
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(network), str(path))


def _whole_volume(
    model_path: str, raw_url: str, input_shape, output_shape, batch_size: int, prediction_path: str
) -> dict[str, float]:
    """Save the model, then predict the whole volume on one thread (in a child process).

    The prediction goes to ``prediction_path`` (``.npy``).
    """
    import torch

    from blockseg.volume import open_volume
    from workers.predict import load_model, normalize, predict_volume

    torch.set_num_threads(1)
    _save_model(Path(model_path))
    start = time.perf_counter()
    volume = open_volume(raw_url)
    raw = volume.read(volume.roi)
    read_seconds = time.perf_counter() - start
    model = load_model(f"torchscript:{model_path}")
    # One window first, as the stage's probe does on a worker before any block:
    # torch sets up its convolution kernels on the first call.
    model(np.zeros((batch_size, 1) + tuple(input_shape), np.float32))
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    padded = np.pad(normalize(raw, "scale01"), CONTEXT)
    prediction = predict_volume(
        model, padded, input_shape, output_shape, batch_size=batch_size, total_shape=raw.shape,
        out_channels=OUT_CHANNELS,
    )
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    np.save(prediction_path, prediction)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mib": _peak_mib(), "read_seconds": read_seconds}


# What one block's profile reports: (label, file name, function name), summed
# over calls; "model" is inside "window loop", which is reported without it.
_PHASES = (
    ("read zarr", "blockseg/volume.py", "read"),
    ("normalise", "workers/predict.py", "normalize"),
    ("window loop", "workers/predict.py", "predict_volume"),
    ("model", "workers/predict.py", "__call__"),
    ("to storage", "workers/predict.py", "to_storage"),
    ("write zarr", "blockseg/volume.py", "write"),
    ("open volumes", "blockseg/volume.py", "open_volume"),
)


def _profile_block(function, block) -> dict[str, float]:
    """Seconds per phase of one call of the stage's block function (run on a worker)."""
    function(block)  # the model is loaded and warm, as for every block but a worker's first
    profile = cProfile.Profile()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    profile.runcall(function, block)
    total = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    phases = {}
    for label, file_name, function_name in _PHASES:
        phases[label] = sum(
            entry[3] for (file, _, name), entry in stats.items() if name == function_name and file.endswith(file_name)
        )
    phases["window loop"] -= phases["model"]
    phases["other"] = total - sum(phases.values())
    phases["total"] = total
    phases["system"] = after.ru_stime - before.ru_stime
    phases["page faults"] = after.ru_minflt - before.ru_minflt
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small volume that runs in about a minute")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, help="volume shape in voxels (z y x)")
    parser.add_argument("--block", type=int, nargs=3, help="block shape in voxels (z y x); a multiple of --window")
    parser.add_argument(
        "--window", type=int, nargs=3, default=(32, 64, 64),
        help="the model's output window in voxels (z y x); its input is 4 voxels larger on each side",
    )
    parser.add_argument("--warm-workers", action="store_true", help="load the model on every worker before the stage")
    parser.add_argument(
        "--no-malloc-trim", action="store_true", help="start the workers without dask's MALLOC_TRIM_THRESHOLD_"
    )
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()

    import dask
    from distributed import Client, LocalCluster

    from blockseg.config import load_config
    from blockseg.demo import DEMO_VOXEL_SIZE
    from blockseg.pipeline import STAGES, open_run, run_pipeline
    from blockseg.stages import probe_model
    from blockseg.volume import open_volume

    shape = tuple(args.shape or ((32, 256, 256) if args.quick else (64, 512, 512)))
    block = tuple(args.block or (32, 128, 128))
    output_shape = tuple(args.window)
    input_shape = tuple(o + 2 * CONTEXT for o in output_shape)
    batch_size = 1
    if any(b % o for b, o in zip(block, output_shape)):
        parser.error(f"--block {list(block)} must be a multiple of the output window {list(output_shape)}")
    voxel_size = DEMO_VOXEL_SIZE
    voxels = math.prod(shape)
    num_blocks = math.prod(-(-s // b) for s, b in zip(shape, block))

    with tempfile.TemporaryDirectory(prefix="blockseg-bench-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        raw_url = _child(_write_inputs, str(folder), shape)
        print(f"synthetic raw {shape} at {voxel_size} nm written in {time.perf_counter() - start:.1f} s")
        model_path = folder / "model.pt"
        spec = f"torchscript:{model_path}"
        print(
            f"model: {CONV_LAYERS} valid 3x3x3 convolutions, {FEATURES} features, 1 -> {OUT_CHANNELS} channels; "
            f"input {list(input_shape)}, output {list(output_shape)}, context {CONTEXT} voxels per side"
        )
        load_before = os.getloadavg()[0]
        prediction_path = folder / "whole.npy"
        # Before the cluster: its nannies put OMP_NUM_THREADS and MALLOC_TRIM_THRESHOLD_
        # into this process's environment, which a child started later would inherit.
        whole = _child(
            _whole_volume, str(model_path), raw_url, input_shape, output_shape, batch_size, str(prediction_path)
        )

        config_path = folder / "bench.yaml"
        config_path.write_text(
            yaml.safe_dump(
                {
                    "input": {"raw": "input.zarr/raw"},
                    "output": "output",
                    "block_shape": [b * v for b, v in zip(block, voxel_size)],
                    "stages": {
                        "predict": {
                            "model": spec,
                            "input_shape": list(input_shape),
                            "output_shape": list(output_shape),
                            "outputs": {"affinities": OUT_CHANNELS},
                            "normalize": "scale01",
                            "output_dtype": "float32",
                            "batch_size": batch_size,
                        }
                    },
                    "scheduler": {"progress": False},
                },
                sort_keys=False,
            )
        )
        config = load_config(config_path)
        environ = (
            dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
            if args.no_malloc_trim
            else contextlib.nullcontext()
        )
        with environ, LocalCluster(
            n_workers=args.workers, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        ) as cluster, Client(cluster) as client:
            run = open_run(config)
            if args.warm_workers:
                client.run(probe_model, spec, "cpu", input_shape, output_shape, OUT_CHANNELS)
            cpu_before, driver_before = client.run(_cpu_seconds), _cpu_seconds()
            reports = run_pipeline(run, client, stages=["predict"])
            cpu_after, driver_cpu = client.run(_cpu_seconds), _cpu_seconds() - driver_before
            # Only now: importing torch on the workers earlier would hide what the stage pays for it.
            worker_peaks = client.run(_peak_mib)
            worker_high_water = client.run(_high_water_mib)
            worker_threads = client.run(_torch_threads)
            stage = STAGES["predict"]
            grid = run.grid(stage.context(run))
            # Rewrites the same values: a block is idempotent.
            profile = client.submit(
                _profile_block, stage.block_function(run), grid.block(grid.num_blocks // 2), pure=False
            ).result()
        load_after = os.getloadavg()[0]
        blockwise_seconds = reports["predict"].seconds
        # Includes the stage's model probe on one worker, before its wall time starts.
        blockwise_cpu = sum(cpu_after[w] - cpu_before[w] for w in cpu_after)

        blockwise = open_volume(run.dataset_url("affinities")).read(run.total_roi)
        difference = float(np.max(np.abs(blockwise - np.load(prediction_path))))
        del blockwise
        run.store.close()

    whole_seconds, whole_cpu, whole_peak = whole["seconds"], whole["cpu_seconds"], whole["peak_mib"]
    whole_rate = voxels / whole_seconds / 1e6
    blockwise_rate = voxels / blockwise_seconds / args.workers / 1e6
    efficiency = blockwise_rate / whole_rate
    figures = {
        "blockwise_mvox_per_s_per_worker": round(blockwise_rate, 4),
        "whole_mvox_per_s": round(whole_rate, 4),
        "blockwise_peak_mib": round(max(worker_peaks.values()), 1),
        "blockwise_efficiency": round(efficiency, 4),
        "blockwise_seconds": round(blockwise_seconds, 3),
        "whole_seconds": round(whole_seconds, 3),
        "whole_peak_mib": round(whole_peak, 1),
        "blockwise_peak_hwm_mib": round(max(worker_high_water.values()), 1),
        "blockwise_cpu_seconds": round(blockwise_cpu, 3),
        "whole_cpu_seconds": round(whole_cpu, 3),
        "blockwise_cpu_efficiency": round(whole_cpu / blockwise_cpu, 4),
        "driver_cpu_seconds": round(driver_cpu, 3),
        "max_abs_difference": difference,
        "worker_torch_threads": max(t["intra_op"] for t in worker_threads.values()),
        "load_average": round(max(load_before, load_after), 2),
    }
    for label, value in profile.items():
        key = f"block_{label.replace(' ', '_')}" + ("" if label == "page faults" else "_seconds")
        figures[key] = round(value, 4)

    print(f"\nvolume {shape} = {voxels / 1e6:.2f} Mvoxel, blocks {block} ({num_blocks}), {args.workers} worker(s)")
    switches = [s for s, on in (("--warm-workers", args.warm_workers), ("--no-malloc-trim", args.no_malloc_trim)) if on]
    if switches:
        print(f"with {' '.join(switches)}")
    print(f"{'':<24} {'seconds':>8} {'Mvox/s':>8} {'CPU s':>8} {'peak MiB':>9}")
    print(f"{'whole volume, 1 thread':<24} {whole_seconds:8.2f} {whole_rate:8.3f} {whole_cpu:8.2f} {whole_peak:9.0f}")
    print(
        f"{'blockwise, per worker':<24} {blockwise_seconds:8.2f} {blockwise_rate:8.3f} "
        f"{blockwise_cpu / args.workers:8.2f} {figures['blockwise_peak_mib']:9.0f}"
    )
    print(
        f"(reading the whole raw from zarr, not counted above: {whole['read_seconds']:.2f} s; "
        f"busiest worker's own high-water RSS, VmHWM: {figures['blockwise_peak_hwm_mib']:.0f} MiB)"
    )
    target = "meets" if efficiency >= 0.6 else "MISSES"
    print(f"blockwise efficiency {efficiency:.3f} ({target} the target of 0.6)")
    print(
        f"by CPU time: {whole_cpu / blockwise_cpu:.3f} (whole CPU seconds / all workers' CPU seconds; "
        f"less sensitive to other load)"
    )
    print(f"driver and scheduler (one process) used {driver_cpu:.2f} CPU s during the stage")
    cores = os.cpu_count() or 1
    busy = " -- the machine is busy: wall-clock figures are unreliable" if figures["load_average"] > cores else ""
    print(f"load average {load_before:.1f} before, {load_after:.1f} after, on {cores} core(s){busy}")
    threads = "; ".join(
        f"{t['intra_op']} intra-op / {t['inter_op']} inter-op "
        f"(OMP_NUM_THREADS={t['OMP_NUM_THREADS']}, MALLOC_TRIM_THRESHOLD_={t['MALLOC_TRIM_THRESHOLD_']})"
        for t in worker_threads.values()
    )
    print(f"torch threads per worker: {threads}")
    print(f"max |blockwise - whole| = {difference:.3g} (tolerance {TOLERANCE:g})")
    print(f"one block ({math.prod(block) / 1e6:.2f} Mvoxel) profiled on a worker:")
    shown = ("read zarr", "normalise", "model", "window loop", "to storage", "write zarr", "open volumes", "other")
    for label in shown:
        print(f"  {label:<14} {profile[label]:8.3f} s  {100 * profile[label] / profile['total']:5.1f} %")
    print(
        f"  {'total':<14} {profile['total']:8.3f} s  (system time {profile['system']:.3f} s, "
        f"{profile['page faults']:.0f} minor page faults)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")
    if not difference <= TOLERANCE:
        sys.exit(f"blockwise prediction differs from the whole-volume one by {difference:.3g} > {TOLERANCE:g}")


if __name__ == "__main__":
    main()
