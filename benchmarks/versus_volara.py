"""blockseg against volara on the same synthetic volume, blocks and workers, in one sitting.

volara (with ``waterz`` and ``scikit-image``) is installed in its own virtual
environment under a temporary folder, never in blockseg's; ``--volara-venv
PATH`` reuses (or creates and keeps) one there so repeated runs do not
reinstall. Both sides read the same uint8 affinities (``round(255 * a)`` of the
float affinities of ``blockseg.demo.write_demo_inputs``, seed 0, voxel size
``DEMO_VOXEL_SIZE``), the same block shape and the same number of workers.

volara side (a driver script run by that environment's python in a fresh
working folder, which holds its ``volara_logs`` ledger; volara reads its own
zarr copy of the affinities with the neighbourhood ``-e_z, -e_y, -e_x``):

- ``ExtractFrags``: mutex watershed per block on the nearest-neighbour
  affinities, seeded at the maxima of the distance to the boundary
  (``min_seed_distance`` 10 voxels), context 4 x 8 x 8 voxels, fragments
  under 64 voxels removed (``remove_debris``, as in volara's CREMI example),
  bias -0.6. Bias and debris removal come from a scan on the quick volume
  (bias -0.5 ... -0.9, with and without ``remove_debris``): -0.5 lets
  fragments leak across boundaries, a more negative bias leaves more voxels
  unlabelled, and without debris removal the membrane band becomes tens of
  thousands of one-voxel fragments that cost time and VOI;
- ``AffAgglom``: mean affinity between touching fragments, context 2 voxels;
- ``GraphMWS``: mutex watershed on the fragment graph, edge weight
  ``affinity - 0.5``. volara runs it as one block (the whole graph), so with
  one worker;
- ``Relabel``: fragments to segments through the lookup table.

Each stage is timed on its own (``volara_<stage>_seconds``, daisy's worker
start included); ``volara_seconds`` is their sum. To give volara the same
chance as blockseg, whose score is the best of its nine thresholds, GraphMWS
is then run again, untimed, at biases -0.1 ... -0.9 (bias -b merges an edge
of affinity above b, as blockseg's threshold 1 - b does); each lookup table is
applied to the contingency table of volara's fragments and ``volara_voi_sum``
is the best VOI over these (``volara_best_bias``). ``volara_relabel_voi_sum``
scores the volume Relabel wrote at bias -0.5 (it must equal the sweep's -0.5).

blockseg side: ``blockseg run CONFIG --no-progress`` in a subprocess with
``cluster: local``, one single-threaded worker per ``--workers``, blockseg's
default fragments, agglomerate and segments parameters, and one relabelled
threshold (0.5, like volara's one Relabel). ``blockseg_run_seconds`` is the
whole command (interpreter and cluster start, input check, evaluate, ...);
``blockseg_seconds`` is the sum of the fragments, agglomerate, segments and
relabel seconds the run prints (to 0.1 s). ``blockseg_voi_sum`` is
``scores.json``'s best VOI sum.

VOI is split + merge in bits with ground-truth label 0 ignored, computed with
blockseg's ``workers.evaluate`` for both sides; every other voxel counts, so
the voxels volara leaves unlabelled (0: mutex watershed gives 0 to a voxel
with no affinity above the bias, which on these affinities is the membrane
band) are one segment spanning many objects. ``volara_unlabelled_fraction``
says how many; ``volara_labelled_voi_sum`` is volara's best VOI on the voxels
it labelled only (for reference; blockseg labels every voxel).

``speedup`` is ``volara_seconds / blockseg_seconds``. With ``--json PATH`` the
figures are written as one flat JSON object (``volara_seconds``,
``blockseg_seconds``, ``blockseg_run_seconds``, ``speedup``,
``volara_voi_sum``, ``blockseg_voi_sum``, per-stage seconds,
``volara_install_seconds``, ``load_before``, ``load_after``: the 1-minute
load average, as the machine's other work moves every figure). Everything
is written under one temporary folder, deleted at the end (``--keep`` keeps
it).

Usage::

    python benchmarks/versus_volara.py            # 128 x 256 x 256, blocks 64 x 128 x 128
    python benchmarks/versus_volara.py --quick    # 64 x 128 x 128, blocks 32 x 64 x 64
    python benchmarks/versus_volara.py --volara-venv /tmp/volara-venv --json figures.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import yaml

STAGES = ("fragments", "agglomerate", "segments", "relabel")
VOLARA_STAGES = ("extract_frags", "aff_agglom", "graph_mws", "relabel")
PACKAGES = ("volara", "waterz", "scikit-image")
NEIGHBORHOOD = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]  # blockseg's affinity channels: offset -e_c
BIAS = -0.5
SWEEP = [round(-0.1 * i, 1) for i in range(1, 10)]
EXTRACT_FRAGS = {"bias": [-0.6] * 3, "min_seed_distance": 10, "context": [4, 8, 8], "remove_debris": 64}
AGGLOM_CONTEXT = [2, 2, 2]
BLOCKSEG_THRESHOLD = 0.5

DRIVER = r'''
import multiprocessing as mp

mp.set_start_method("fork", force=True)

import json
import sys
import time
from multiprocessing import Event
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np


def run_task(task, multiprocessing=True):
    """Run one volara task blockwise; return the seconds, fail on a failed block."""
    import daisy

    start = time.perf_counter()
    with task.task(multiprocessing=multiprocessing) as daisy_task:
        if multiprocessing:
            daisy.tcp.IOLooper.clear()
            with ThreadPool(processes=1) as pool:
                states = pool.apply(lambda: daisy.Server(stop_event=Event()).run_blockwise([daisy_task]))
        else:
            states = daisy.SerialServer().run_blockwise([daisy_task])
    seconds = time.perf_counter() - start
    bad = sum(s.failed_count + s.orphaned_count for s in states.values())
    if bad:
        raise RuntimeError(f"{task.task_name}: {bad} block(s) failed")
    return seconds


def main():
    from importlib.metadata import version

    from funlib.geometry import Coordinate
    from funlib.persistence import open_ds, prepare_ds
    from volara.blockwise import AffAgglom, ExtractFrags, GraphMWS, Relabel
    from volara.datasets import Affs, Labels
    from volara.dbs import SQLite
    from volara.lut import LUT

    p = json.loads(Path(sys.argv[1]).read_text())
    voxel_size, block = Coordinate(p["voxel_size"]), Coordinate(p["block"])
    data = np.load("affinities.npy")
    array = prepare_ds("data.zarr/affinities", shape=data.shape, offset=(0, 0, 0), voxel_size=voxel_size,
                       axis_names=["c^", "z", "y", "x"], units=["nm"] * 3, chunk_shape=(data.shape[0], *block),
                       dtype=np.uint8, mode="w")
    array[array.roi] = data
    roi = array.roi
    del data
    affs = Affs(store=Path("data.zarr/affinities"), neighborhood=[Coordinate(o) for o in p["neighborhood"]],
                writable=False)
    db = SQLite(path=Path("data.zarr/fragments.db"), edge_attrs={"aff": "float"})
    frags = Labels(store=Path("data.zarr/fragments"))
    segs = Labels(store=Path("data.zarr/segments"))
    lut = LUT(path="data.zarr/lut")
    workers = p["workers"]
    tasks = {
        "extract_frags": ExtractFrags(db=db, affs_data=affs, frags_data=frags, block_size=block,
                                      num_workers=workers, **p["extract_frags"]),
        "aff_agglom": AffAgglom(
            db=db, affs_data=affs, frags_data=frags, block_size=block, context=Coordinate(p["agglom_context"]),
            scores={"aff": affs.neighborhood}, num_workers=workers),
        "graph_mws": GraphMWS(db=db, lut=lut, weights={"aff": (1.0, p["bias"])}, roi=roi, num_workers=1),
        "relabel": Relabel(lut=lut, frags_data=frags, seg_data=segs, block_size=block, num_workers=workers),
    }
    seconds = {name: run_task(task) for name, task in tasks.items()}
    np.save("fragments.npy", open_ds("data.zarr/fragments")[roi])
    np.save("segments.npy", open_ds("data.zarr/segments")[roi])
    for i, bias in enumerate(p["sweep"]):
        sweep_lut = LUT(path=f"data.zarr/lut_{i}")
        run_task(GraphMWS(db=db, lut=sweep_lut, weights={"aff": (1.0, bias)}, roi=roi), multiprocessing=False)
        np.save(f"lut_{i}.npy", sweep_lut.load())
    Path("results.json").write_text(json.dumps({"seconds": seconds, "version": version("volara")}))


if __name__ == "__main__":
    main()
'''


def _fail(message: str) -> NoReturn:
    raise SystemExit(f"versus_volara: {message}")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def volara_python(venv: Path) -> tuple[Path, float]:
    """The python of a venv holding volara, waterz and scikit-image; build it if needed.

    Returns the interpreter and the seconds the install took (0 when reused).
    """
    python = venv / "bin" / "python"
    if python.exists():
        probe = subprocess.run([str(python), "-c", "import volara, waterz, skimage"], capture_output=True, text=True)
        if probe.returncode == 0:
            return python, 0.0
    start = time.perf_counter()
    if not python.exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode != 0:
            _fail(f"cannot create a virtualenv at {venv}: {_last_line(made.stderr)}")
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], capture_output=True, text=True)
    if pip.returncode != 0:
        _fail(f"cannot install {' '.join(PACKAGES)}: {_last_line(pip.stderr)}")
    return python, time.perf_counter() - start


def write_inputs(folder: Path, shape: tuple[int, ...], block: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The demo volume in ``folder/input.zarr`` plus a uint8 copy of its affinities.

    Returns the uint8 affinities and the labels.
    """
    from blockseg.demo import DEMO_VOXEL_SIZE, write_demo_inputs
    from blockseg.volume import create_volume, open_volume

    container = write_demo_inputs(folder, shape=shape, seed=0)
    source = open_volume(f"{container}/affinities")
    affinities = source.read(source.roi)
    if affinities.dtype != np.uint8:
        affinities = np.clip(np.rint(affinities * 255.0), 0, 255).astype(np.uint8)
    target = create_volume(f"{container}/affinities_uint8", source.roi, DEMO_VOXEL_SIZE, np.uint8, block, (3,))
    target.write(source.roi, affinities)
    labels = open_volume(f"{container}/labels")
    return affinities, labels.read(labels.roi)


def run_blockseg(folder: Path, block: tuple[int, ...], workers: int) -> dict[str, float]:
    """``blockseg run`` on the uint8 affinities; stage seconds, run seconds and the best VOI sum."""
    from blockseg.demo import DEMO_VOXEL_SIZE

    work = folder / "blockseg"
    work.mkdir()
    config = {
        "input": {
            "affinities": str(folder / "input.zarr" / "affinities_uint8"),
            "ground_truth": str(folder / "input.zarr" / "labels"),
        },
        "output": "output",
        "block_shape": [b * v for b, v in zip(block, DEMO_VOXEL_SIZE)],
        "stages": {"relabel": {"thresholds": [BLOCKSEG_THRESHOLD]}},
        "cluster": {"kind": "local", "local": {"workers": workers, "threads_per_worker": 1}},
    }
    (work / "versus.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "blockseg.cli", "run", "versus.yaml", "--no-progress"],
        cwd=work, capture_output=True, text=True,
    )
    run_seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        _fail(f"blockseg run failed (exit {done.returncode}): {_last_line(done.stderr or done.stdout)}")
    figures = {"blockseg_run_seconds": run_seconds}
    # each stage's seconds as the run recorded them (to the millisecond; the terminal shows tenths)
    stages_file = work / "output" / "logs" / "stages.json"
    recorded = json.loads(stages_file.read_text()) if stages_file.exists() else {}
    for stage in STAGES:
        if stage in recorded:
            figures[f"blockseg_{stage}_seconds"] = float(recorded[stage]["seconds"])
    missing = [s for s in STAGES if f"blockseg_{s}_seconds" not in figures]
    if missing:
        _fail(f"blockseg run printed no report for {', '.join(missing)}")
    figures["blockseg_seconds"] = sum(figures[f"blockseg_{s}_seconds"] for s in STAGES)
    best = json.loads((work / "output" / "scores.json").read_text())["best"]
    figures["blockseg_voi_sum"] = float(best["voi_sum"])
    figures["blockseg_best_threshold"] = float(best["threshold"])
    return figures


def _sweep_voi(work: Path, fragments: np.ndarray, labels: np.ndarray) -> dict[float, float]:
    """VOI sum of volara's fragments relabelled by each sweep bias's lookup table."""
    from workers.evaluate import contingency_table, relabel_contingency, scores_from_contingency

    table = contingency_table(fragments, labels)
    voi = {}
    for i, bias in enumerate(SWEEP):
        lut = np.load(work / f"lut_{i}.npy").astype(np.uint64).reshape(2, -1)
        order = np.argsort(lut[0], kind="stable")
        voi[bias] = scores_from_contingency(relabel_contingency(table, lut[0][order], lut[1][order]))["voi_sum"]
    return voi


def run_volara(
    folder: Path, python: Path, affinities: np.ndarray, labels: np.ndarray, block: tuple[int, ...], workers: int
) -> dict[str, Any]:
    """The four volara stages in a subprocess; their seconds and the VOI of its segmentations."""
    from blockseg.demo import DEMO_VOXEL_SIZE
    from workers.evaluate import evaluate_arrays

    work = folder / "volara"
    work.mkdir()
    np.save(work / "affinities.npy", affinities)
    params = dict(extract_frags=EXTRACT_FRAGS, agglom_context=AGGLOM_CONTEXT, voxel_size=list(DEMO_VOXEL_SIZE),
                  block=list(block), workers=workers, neighborhood=NEIGHBORHOOD, bias=BIAS, sweep=SWEEP)
    (work / "params.json").write_text(json.dumps(params))
    (work / "driver.py").write_text(DRIVER)
    with open(work / "volara.log", "w") as log:
        done = subprocess.run([str(python), "driver.py", "params.json"], cwd=work, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = (work / "volara.log").read_text().splitlines()[-30:]
        sys.stderr.write("\n".join(tail) + "\n")
        _fail(f"the volara driver failed (exit {done.returncode}): {tail[-1] if tail else '(no output)'}")
    results = json.loads((work / "results.json").read_text())
    figures = {f"volara_{name}_seconds": results["seconds"][name] for name in VOLARA_STAGES}
    figures["volara_seconds"] = sum(figures[f"volara_{name}_seconds"] for name in VOLARA_STAGES)

    segments = np.load(work / "segments.npy")
    figures["volara_relabel_voi_sum"] = evaluate_arrays(segments, labels)["voi_sum"]
    del segments
    fragments = np.load(work / "fragments.npy")
    unlabelled = fragments == 0
    figures["volara_fragments"] = len(np.unique(fragments)) - int(unlabelled.any())
    figures["volara_unlabelled_fraction"] = float(unlabelled.mean())
    voi = _sweep_voi(work, fragments, labels)
    if abs(voi[BIAS] - figures["volara_relabel_voi_sum"]) > 1e-6:
        print(f"note: volara's Relabel volume scores {figures['volara_relabel_voi_sum']:.4f}, "
              f"its lookup table applied to its fragments {voi[BIAS]:.4f}")
    labelled = _sweep_voi(work, fragments, np.where(unlabelled, 0, labels))
    del fragments, unlabelled
    best = min(voi, key=voi.get)
    figures.update(volara_voi_sum=voi[best], volara_best_bias=best, volara_labelled_voi_sum=min(labelled.values()))
    figures["volara_voi_by_bias"] = voi  # printed, then dropped from the flat JSON
    print(f"volara {results['version']}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small volume that runs in about a minute")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, help="volume shape in voxels (z y x)")
    parser.add_argument("--block", type=int, nargs=3, help="block shape in voxels (z y x)")
    parser.add_argument("--volara-venv", type=Path, help="reuse (or create and keep) volara's virtualenv here")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (printed) for inspection")
    args = parser.parse_args()

    shape = tuple(args.shape or ((64, 128, 128) if args.quick else (128, 256, 256)))
    block = tuple(args.block or ((32, 64, 64) if args.quick else (64, 128, 128)))
    tmp = Path(tempfile.mkdtemp(prefix="versus-volara-"))
    try:
        python, install_seconds = volara_python(args.volara_venv or tmp / "venv")
        print(f"volara environment {python.parent.parent}: "
              + (f"installed in {install_seconds:.0f} s" if install_seconds else "reused"))
        start = time.perf_counter()
        affinities, labels = write_inputs(tmp, shape, block)
        print(f"synthetic input {shape} (uint8 affinities) written in {time.perf_counter() - start:.1f} s")
        figures: dict = {"volara_install_seconds": round(install_seconds, 1), "load_before": os.getloadavg()[0]}
        figures.update(run_blockseg(tmp, block, args.workers))
        figures.update(run_volara(tmp, python, affinities, labels, block, args.workers))
        figures["load_after"] = os.getloadavg()[0]
    finally:
        if args.keep:
            print(f"temporary folder kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    voxels = int(np.prod(shape))
    print(f"\nvolume {shape} = {voxels / 1e6:.1f} Mvoxel, blocks {block}, {args.workers} worker(s)")
    print(f"{'blockseg stage':<16} {'seconds':>8}    {'volara stage':<16} {'seconds':>8}")
    for ours, theirs in zip(STAGES, VOLARA_STAGES):
        print(f"{ours:<16} {figures[f'blockseg_{ours}_seconds']:8.2f}    "
              f"{theirs:<16} {figures[f'volara_{theirs}_seconds']:8.2f}")
    print(f"{'sum':<16} {figures['blockseg_seconds']:8.2f}    {'sum':<16} {figures['volara_seconds']:8.2f}")
    print(f"blockseg whole run (start, check, evaluate, ...): {figures['blockseg_run_seconds']:.2f} s; "
          f"1-minute load average {figures['load_before']:.1f} before, {figures['load_after']:.1f} after")
    figures["speedup"] = figures["volara_seconds"] / max(figures["blockseg_seconds"], 1e-9)
    print(f"speedup (volara / blockseg, four stages): {figures['speedup']:.2f}x")
    by_bias = figures.pop("volara_voi_by_bias")
    print("volara VOI sum by GraphMWS bias: " + ", ".join(f"{b}: {v:.4f}" for b, v in sorted(by_bias.items())))
    print(f"VOI sum (best): blockseg {figures['blockseg_voi_sum']:.4f} at threshold "
          f"{figures['blockseg_best_threshold']}, volara {figures['volara_voi_sum']:.4f} at bias "
          f"{figures['volara_best_bias']} ({figures['volara_relabel_voi_sum']:.4f} at its timed bias {BIAS})")
    print(f"volara left {100 * figures['volara_unlabelled_fraction']:.1f}% of the voxels unlabelled (0); "
          f"on the voxels it labelled its best VOI sum is {figures['volara_labelled_voi_sum']:.4f}")
    figures = {key: round(float(value), 4) for key, value in figures.items()}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
