"""Train a small 3D U-Net for affinities (+ LSDs) on CPU, then segment with blockseg.

The example walks the whole path from raw EM with ground truth to a scored
segmentation:

1. load ``flyem_medulla_250.npz`` (FIB-SEM, 250^3 voxels at 10 nm, dense labels);
2. train a 3-level U-Net on the first half (z < 125) to predict the three
   nearest-neighbour affinities, with local shape descriptors (LSDs) as an
   auxiliary target, for a wall-time budget;
3. save it as TorchScript and write the held-back half (z >= 125) to
   ``OUT/data.zarr`` at its world position;
4. write ``OUT/pipeline.yaml`` and run ``blockseg run`` on it: predict,
   fragments, agglomerate, segments, relabel, evaluate;
5. print the VOI per threshold, the best one, and the training and
   prediction times.

The network
-----------
Valid 3x3x3 convolutions (two per level, ReLU), 2x max-pooling down,
2x transposed convolutions up, skip connections cropped to the centre, and a
1x1x1 head with 13 sigmoid outputs: 3 affinities (offsets (-1, 0, 0),
(0, -1, 0), (0, 0, -1)), then the 10 LSD channels. Each valid convolution
eats one voxel per side, so the output is the input minus 40 voxels per axis
(20 voxels, 200 nm, of context on each side)::

    input_shape  = [104, 104, 104]   # what blockseg feeds each window
    output_shape = [64, 64, 64]      # centred in the input

The network is fully convolutional, so it trains on smaller windows
(88^3 in, 48^3 out) for more steps per minute, and predicts on the larger ones,
which waste less of each window on context. ``block_shape`` is one output
window (64 voxels = 640 nm at 10 nm), so every block is exactly one window
on blockseg's window grid.

Usage
-----
::

    python examples/train_affinities.py --out /tmp/train_example            # ~15 min training
    python examples/train_affinities.py --iterations 20 --out /tmp/smoke    # a quick smoke run

Not part of CI: it takes about 17-18 minutes on 2 cores with the defaults
(15 min training, up to a minute of LSD targets, under a minute or two for
the pipeline). How many training steps 15 minutes buy depends on the CPU:
about 1.3 steps/s on 2 idle cores, 0.4 on 2 shared ones.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from blockseg.geometry import Roi
from blockseg.volume import create_volume
from workers.lsds import local_shape_descriptors

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "flyem_medulla_250.npz"

# Network geometry (voxels); see the module docstring.
LEVELS = 3
FEATURES = 12  # base feature maps; doubled at every level down
TRAIN_INPUT = 88  # training window: output 48^3
PREDICT_INPUT = 104  # prediction window: output 64^3

AFFINITY_CHANNELS = 3
LSD_CHANNELS = 10
LSD_SIGMA = 80.0  # nm: about the radius of the thinner neurites here

# LSD channels that change under a flip of an axis (on the object, 1 - value):
# the mean offset along that axis and the Pearson correlations involving it.
LSD_FLIP_CHANNELS = {0: (0, 6, 7), 1: (1, 6, 8), 2: (2, 7, 8)}

# The class balance of a batch is clipped to this, so a window that is all
# one class does not give the few voxels of the other a huge weight.
MIN_CLASS_FRACTION = 0.05

# Fraction of the volume (along z) used for training; the rest is held back.
TRAIN_FRACTION = 0.5


# ---------------------------------------------------------------------------
# the network


def valid_output_size(size: int, levels: int = LEVELS) -> int | None:
    """Output size along one axis for an input of ``size`` voxels, or None if it does not fit.

    Parameters
    ----------
    size : int
        Input window size along the axis.
    levels : int
        Resolution levels of the U-Net.

    Returns
    -------
    int or None
        The valid output size; None when a pooling step would meet an odd
        size or a size drops to zero or below.

    Examples
    --------
    >>> valid_output_size(104), valid_output_size(88), valid_output_size(102)
    (64, 48, None)
    """
    for _ in range(levels - 1):
        size -= 4
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= 4
    if size <= 0:
        return None
    for _ in range(levels - 1):
        size = size * 2 - 4
    return size


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3),
        nn.ReLU(inplace=True),
        nn.Conv3d(out_channels, out_channels, 3),
        nn.ReLU(inplace=True),
    )


def _crop_centre(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """The centre of ``x`` with spatial ``shape`` (the differences are even by construction)."""
    dz = (x.shape[2] - shape[0]) // 2
    dy = (x.shape[3] - shape[1]) // 2
    dx = (x.shape[4] - shape[2]) // 2
    return x[:, :, dz : dz + shape[0], dy : dy + shape[1], dx : dx + shape[2]]


class UNet(nn.Module):
    """A small valid-convolution 3D U-Net: (B, 1, *in) -> (B, 13, *out), sigmoid outputs.

    Parameters
    ----------
    levels : int
        Resolution levels (pooling steps + 1).
    features : int
        Feature maps at the top level; doubled at every level down.
    out_channels : int
        Output channels (affinities, then LSDs).
    """

    def __init__(self, levels: int = LEVELS, features: int = FEATURES, out_channels: int = 13) -> None:
        super().__init__()
        widths = [features * 2**level for level in range(levels)]
        self.down = nn.ModuleList(
            [_conv_block(1 if level == 0 else widths[level - 1], widths[level]) for level in range(levels)]
        )
        self.pool = nn.MaxPool3d(2)
        # The up path is stored deepest first, the order forward runs it in.
        self.upsample = nn.ModuleList(
            [nn.ConvTranspose3d(widths[level + 1], widths[level], 2, stride=2) for level in reversed(range(levels - 1))]
        )
        self.up = nn.ModuleList(
            [_conv_block(2 * widths[level], widths[level]) for level in reversed(range(levels - 1))]
        )
        self.head = nn.Conv3d(features, out_channels, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The outputs before the sigmoid (what the losses are taken of)."""
        skips: list[torch.Tensor] = []
        for level, block in enumerate(self.down):
            if level > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        for index, (upsample, block) in enumerate(zip(self.upsample, self.up)):
            x = upsample(x)
            skip = _crop_centre(skips[len(skips) - 2 - index], [x.shape[2], x.shape[3], x.shape[4]])
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


# ---------------------------------------------------------------------------
# data and targets


def load_data(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """Raw (uint8), labels and voxel size (nm) from an ``.npz`` with keys raw, labels, voxel_size."""
    if not path.is_file():
        sys.exit(f"train_affinities: {path} not found (give --data PATH)")
    with np.load(path) as data:
        raw, labels, voxel_size = data["raw"], data["labels"], data["voxel_size"]
    if raw.dtype != np.uint8 or raw.shape != labels.shape or raw.ndim != 3:
        sys.exit(f"train_affinities: {path}: expected uint8 raw and labels of one 3D shape")
    return raw, labels, tuple(int(v) for v in voxel_size)


def affinities_from_labels(labels: np.ndarray) -> np.ndarray:
    """Nearest-neighbour affinities of the inner voxels of ``labels``.

    Parameters
    ----------
    labels : ndarray of int, shape (z + 2, y + 2, x + 2)
        Labels with one voxel of margin on every side (0 where unknown).

    Returns
    -------
    ndarray of float32, shape (3, z, y, x)
        Channel ``c`` at voxel ``p`` is 1 where ``labels[p] == labels[p - e_c] != 0``.

    Examples
    --------
    >>> labels = np.pad(np.array([[[1, 1, 2]]]), 1)
    >>> affinities_from_labels(labels)[2, 0, 0].tolist()
    [0.0, 1.0, 0.0]
    """
    inner = labels[1:-1, 1:-1, 1:-1]
    neighbours = (labels[:-2, 1:-1, 1:-1], labels[1:-1, :-2, 1:-1], labels[1:-1, 1:-1, :-2])
    return np.stack([(inner == n) & (inner != 0) for n in neighbours]).astype(np.float32)


def flip_lsds(lsds: np.ndarray, foreground: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """The LSDs of the labels flipped along ``axes``, from the LSDs of the unflipped labels.

    A flip mirrors every channel and negates the offset along the axis and
    the correlations involving it, which in the [0, 1] encoding is
    ``1 - value`` on the objects (background stays 0). Equal to computing the
    LSDs of the flipped labels, up to float32 rounding.

    Parameters
    ----------
    lsds : ndarray of float32, shape (10, z, y, x)
    foreground : ndarray of bool, shape (z, y, x)
        Where the (unflipped) labels are not 0.
    axes : sequence of int
        Spatial axes (0, 1, 2) to flip.
    """
    lsds = lsds.copy()
    for axis in axes:
        for channel in LSD_FLIP_CHANNELS[axis]:
            lsds[channel][foreground] = 1.0 - lsds[channel][foreground]
    if axes:
        lsds = np.ascontiguousarray(np.flip(lsds, axis=tuple(a + 1 for a in axes)))
    return lsds


class Sampler:
    """Random training windows of the training half, with random flips.

    The raw is normalised like blockseg's ``scale01`` (uint8 / 255) and padded
    with zeros by the network's context, as blockseg pads outside the
    volume, so windows at the edges look like blockseg's edge windows. The
    labels get one voxel of zero margin so affinities are defined (0) at the
    edges. LSDs are computed once for the whole training half; flips are
    applied to them analytically (see :func:`flip_lsds`).

    Parameters
    ----------
    raw, labels : ndarray, shape (z, y, x)
        The training half.
    voxel_size : tuple of int
        nm per voxel.
    input_size, output_size : int
        Training window sizes (cubes).
    rng : numpy.random.Generator
        Draws window positions and flips.
    """

    def __init__(
        self,
        raw: np.ndarray,
        labels: np.ndarray,
        voxel_size: Sequence[int],
        input_size: int,
        output_size: int,
        rng: np.random.Generator,
    ) -> None:
        self.context = (input_size - output_size) // 2
        self.output_size = output_size
        self.rng = rng
        self.shape = labels.shape
        self.raw = np.pad(raw.astype(np.float32) / np.float32(255), self.context)
        self.labels = np.pad(labels, 1)
        self.lsds = local_shape_descriptors(labels, sigma=LSD_SIGMA, voxel_size=voxel_size)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``size`` random windows: raw (B, 1, *in), affinities (B, 3, *out), LSDs (B, 10, *out)."""
        raws, affinities, lsds = [], [], []
        out = self.output_size
        for _ in range(size):
            z, y, x = (int(self.rng.integers(0, s - out + 1)) for s in self.shape)
            axes = [axis for axis in range(3) if self.rng.random() < 0.5]
            # padded coordinates: raw is padded by `context`, labels by 1
            window = out + 2 * self.context
            raw = self.raw[z : z + window, y : y + window, x : x + window]
            labels = self.labels[z : z + out + 2, y : y + out + 2, x : x + out + 2]
            window_lsds = self.lsds[:, z : z + out, y : y + out, x : x + out]
            foreground = labels[1:-1, 1:-1, 1:-1] != 0
            if axes:
                raw = np.flip(raw, axes)
                # flip first, then take affinities, so they keep pointing to p - e_c
                labels = np.flip(labels, axes)
            raws.append(np.ascontiguousarray(raw))
            affinities.append(affinities_from_labels(labels))
            lsds.append(flip_lsds(window_lsds, foreground, axes))
        return (
            torch.from_numpy(np.stack(raws)[:, np.newaxis]),
            torch.from_numpy(np.stack(affinities)),
            torch.from_numpy(np.stack(lsds)),
        )


# ---------------------------------------------------------------------------
# training


def balanced_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with both classes weighted equally, per channel.

    Boundaries are a small fraction of the affinities; unweighted, the
    network learns to say "connected" everywhere and the watershed finds too
    few boundaries, which merges neurons.
    """
    dims = (0, 2, 3, 4)
    positive = target.mean(dim=dims, keepdim=True).clamp(MIN_CLASS_FRACTION, 1 - MIN_CLASS_FRACTION)
    weights = torch.where(target > 0.5, 0.5 / positive, 0.5 / (1 - positive))
    return F.binary_cross_entropy_with_logits(logits, target, weight=weights)


def train(
    model: UNet,
    sampler: Sampler,
    seconds: float,
    iterations: int | None,
    batch_size: int,
    learning_rate: float,
    print_every: int,
) -> tuple[int, float]:
    """Train until ``seconds`` have passed or ``iterations`` are done.

    The loss is class-balanced BCE on the affinities plus MSE on the LSDs
    (after the sigmoid, as the network outputs them), with Adam.

    Parameters
    ----------
    model : UNet
        Trained in place.
    sampler : Sampler
        Draws the training windows.
    seconds : float
        Wall-time budget; ignored when ``iterations`` is given.
    iterations : int or None
        A fixed number of steps instead of the budget.
    batch_size : int
        Windows per step.
    learning_rate : float
        Adam's step size.
    print_every : int
        Steps between loss reports (means over those steps).

    Returns
    -------
    iterations : int
        Steps taken.
    seconds : float
        Wall time spent, sampling included.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    start = time.perf_counter()
    sums = np.zeros(2)
    steps = 0
    while True:
        elapsed = time.perf_counter() - start
        if iterations is not None and steps >= iterations:
            break
        if iterations is None and elapsed >= seconds:
            break
        raw, affinities, lsds = sampler.batch(batch_size)
        logits = model.logits(raw)
        affinity_loss = balanced_bce(logits[:, :AFFINITY_CHANNELS], affinities)
        lsd_loss = F.mse_loss(torch.sigmoid(logits[:, AFFINITY_CHANNELS:]), lsds)
        loss = affinity_loss + lsd_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        sums += (affinity_loss.item(), lsd_loss.item())
        if steps % print_every == 0:
            mean = sums / print_every
            elapsed = time.perf_counter() - start
            print(
                f"iteration {steps:5d}  loss {mean.sum():.4f} (affinities {mean[0]:.4f}, lsds {mean[1]:.4f})  "
                f"{steps / elapsed:.2f} it/s  {elapsed / 60:.1f} min",
                flush=True,
            )
            sums[:] = 0
    return steps, time.perf_counter() - start


def export(model: UNet, folder: Path, input_size: int, output_size: int) -> float:
    """Save the model as TorchScript (eval mode) and check it against the eager model.

    The weights are saved first as a plain ``state_dict`` (``model_state.pt``),
    so a failed export never costs the training.

    Parameters
    ----------
    model : UNet
        The trained model.
    folder : Path
        Where ``model.pt`` (TorchScript) and ``model_state.pt`` go.
    input_size, output_size : int
        The prediction window, to check the saved model's output shape.

    Returns
    -------
    float
        The largest difference between the saved and the eager model's outputs
        on one random window.

    Raises
    ------
    RuntimeError
        If the saved model gives another shape, or outputs that differ by more
        than 1e-3 (more than floating point reordering could explain).
    """
    model.eval()
    torch.save(model.state_dict(), folder / "model_state.pt")
    path = folder / "model.pt"
    with warnings.catch_warnings():
        # torch >= 2.10 flags TorchScript as deprecated; blockseg still reads it
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.script(model).save(str(path))
        loaded = torch.jit.load(str(path))
    window = torch.rand(1, 1, input_size, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(window), loaded(window)
    if tuple(got.shape) != (1, AFFINITY_CHANNELS + LSD_CHANNELS) + (output_size,) * 3:
        raise RuntimeError(f"{path} gives shape {tuple(got.shape)} for a {input_size}^3 window")
    difference = float((expected - got).abs().max())
    if difference > 1e-3:
        raise RuntimeError(f"{path} differs from the trained model by up to {difference:.3g}")
    return difference


# ---------------------------------------------------------------------------
# the blockseg run


def write_test_volume(
    out: Path, raw: np.ndarray, labels: np.ndarray, voxel_size: Sequence[int], z_offset: int, chunk: int
) -> None:
    """Write the held-back raw and labels to ``out/data.zarr`` at their world position (z_offset voxels)."""
    offset = (z_offset * voxel_size[0], 0, 0)
    roi = Roi(offset, tuple(s * v for s, v in zip(raw.shape, voxel_size)))
    for name, array in (("raw", raw), ("labels", labels)):
        volume = create_volume(out / "data.zarr" / name, roi, voxel_size, array.dtype, (chunk,) * 3)
        volume.write(roi, array)


def write_config(out: Path, voxel_size: Sequence[int], output_size: int, workers: int) -> Path:
    """Write ``out/pipeline.yaml``: predict with the saved model, then segment and evaluate."""
    config = {
        "input": {"raw": "data.zarr/raw", "ground_truth": "data.zarr/labels"},
        "output": "output",
        # one output window per block, so blocks sit exactly on the window grid
        "block_shape": [output_size * v for v in voxel_size],
        "stages": {
            "predict": {
                "model": "torchscript:model.pt",
                "input_shape": [PREDICT_INPUT] * 3,
                "output_shape": [output_size] * 3,
                "outputs": {"affinities": AFFINITY_CHANNELS, "lsds": LSD_CHANNELS},
                "normalize": "scale01",
                "output_dtype": "uint8",
                "batch_size": 1,
            },
            "fragments": {"min_seed_distance": 100},
            "agglomerate": {"scoring": "hist_quant_50"},
            "segments": {"thresholds": [round(0.1 * i, 1) for i in range(1, 10)]},
            "relabel": {"thresholds": [0.5]},
        },
        "cluster": {"local": {"workers": workers}},
    }
    path = out / "pipeline.yaml"
    header = "# written by examples/train_affinities.py; paths are relative to this file\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def run_blockseg(config: Path) -> tuple[str, float]:
    """Run ``blockseg run CONFIG``; return its stdout and the predict stage's seconds.

    stdout is captured to read the predict time from it. When the run ends,
    its narrative (the ``blockseg:`` lines, stage times included) is echoed;
    the score table that follows is left out, as :func:`print_scores` prints
    it from ``scores.json``. On a failure all of stdout is echoed. stderr
    (progress bars, warnings, errors) goes straight to the terminal.
    """
    command = [sys.executable, "-m", "blockseg.cli", "run", str(config)]
    print("running", " ".join(command), flush=True)
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        print(result.stdout, end="", flush=True)
        logs = config.parent / "output" / "logs"
        sys.exit(f"train_affinities: blockseg run failed with exit code {result.returncode}; see {logs}")
    for line in result.stdout.splitlines():
        if line.startswith("blockseg: "):
            print(line)
    match = re.search(r"^(?:blockseg: )?predict: .* in ([0-9.]+) s", result.stdout, re.MULTILINE)
    return result.stdout, float(match.group(1)) if match else float("nan")


def print_scores(scores: dict) -> None:
    """The VOI (and Rand) errors of the fragments and of every threshold, and the best threshold."""
    columns = ("threshold", "voi_split", "voi_merge", "voi_sum", "rand_split", "rand_merge")
    print(" ".join(f"{name:>10}" for name in columns))
    rows = [("fragments", scores["fragments"])] + list(scores["thresholds"].items())
    for name, s in rows:
        print(
            f"{name:>10} {s['voi_split']:10.4f} {s['voi_merge']:10.4f} {s['voi_sum']:10.4f} "
            f"{s.get('rand_split', float('nan')):10.4f} {s.get('rand_merge', float('nan')):10.4f}"
        )
    best = scores["best"]
    print(
        f"best threshold {best['threshold']}: VOI sum {best['voi_sum']:.4f} "
        f"(split {best['voi_split']:.4f}, merge {best['voi_merge']:.4f})"
    )


# ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; see ``--help``."""
    parser = argparse.ArgumentParser(
        description="Train a small 3D U-Net for affinities (+ LSDs) on the first half of a volume, "
        "then segment and score the second half with blockseg.",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"the .npz (default {DEFAULT_DATA})")
    parser.add_argument(
        "--out", type=Path, default=Path("train_affinities_out"), help="output folder (default ./train_affinities_out)"
    )
    parser.add_argument("--minutes", type=float, default=15.0, help="training wall-time budget (default 15)")
    parser.add_argument("--iterations", type=int, help="train for this many steps instead of --minutes")
    parser.add_argument("--workers", type=int, default=2, help="blockseg worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training (default 2)")
    parser.add_argument("--batch-size", type=int, default=1, help="training windows per step (default 1)")
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="Adam learning rate (default 5e-4)")
    parser.add_argument("--print-every", type=int, default=50, help="iterations between loss reports (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, windows and flips (default 0)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Train, export, write the test half and the config, run blockseg, report."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_output = valid_output_size(TRAIN_INPUT)
    predict_output = valid_output_size(PREDICT_INPUT)
    assert train_output is not None and predict_output is not None

    raw, labels, voxel_size = load_data(args.data)
    split = int(raw.shape[0] * TRAIN_FRACTION)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"data {args.data}: {raw.shape} voxels at {voxel_size} nm; training on z < {split}, testing on z >= {split}")

    start = time.perf_counter()
    sampler = Sampler(raw[:split], labels[:split], voxel_size, TRAIN_INPUT, train_output, rng)
    print(f"targets (LSDs, sigma {LSD_SIGMA:g} nm) in {time.perf_counter() - start:.1f} s", flush=True)

    model = UNet()
    parameters = sum(p.numel() for p in model.parameters())
    budget = "" if args.iterations else f" for {args.minutes:g} min"
    print(
        f"U-Net: {LEVELS} levels, {FEATURES} base features, {parameters} parameters; "
        f"training windows {TRAIN_INPUT}^3 -> {train_output}^3{budget}",
        flush=True,
    )
    steps, train_seconds = train(
        model, sampler, args.minutes * 60, args.iterations, args.batch_size, args.learning_rate, args.print_every
    )
    print(f"trained {steps} iterations in {train_seconds:.1f} s", flush=True)
    difference = export(model, out, PREDICT_INPUT, predict_output)
    print(f"saved {out / 'model.pt'} (TorchScript; max |saved - trained| = {difference:.2g} on a test window)")
    del sampler  # the training arrays are no longer needed while blockseg runs

    write_test_volume(out, raw[split:], labels[split:], voxel_size, split, chunk=predict_output)
    config = write_config(out, voxel_size, predict_output, args.workers)
    pipeline_start = time.perf_counter()
    _, predict_seconds = run_blockseg(config)
    pipeline_seconds = time.perf_counter() - pipeline_start

    scores = json.loads((out / "output" / "scores.json").read_text())
    print(f"\nheld-back half (z >= {split}), VOI in bits:")
    print_scores(scores)
    print(f"training:   {train_seconds:.1f} s ({steps} iterations)")
    print(f"prediction: {predict_seconds:.1f} s (blockseg predict stage, {args.workers} worker(s))")
    print(f"pipeline:   {pipeline_seconds:.1f} s (blockseg run in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
