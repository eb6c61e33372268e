"""Run a network blockwise: model plugins, input normalisation, window tiling.

A model maps an input window of ``input_shape`` voxels to an output window of
``output_shape`` voxels centred in it, so it needs
``context = (input_shape - output_shape) // 2`` voxels of input on every side
of what it predicts. :func:`predict_volume` tiles a block's write region with
output windows and stitches their outputs; :func:`load_model` turns a spec
string into a callable on batches, from one of three plugins:

``torchscript:PATH``
    a TorchScript file (``torch.jit.save``); needs ``pip install blockseg[torch]``.
``onnx:PATH``
    an ONNX file run by onnxruntime; needs ``pip install blockseg[onnx]``.
``python:module.sub:function``
    any importable callable taking a float32 array ``(B, C, *spatial)`` and
    returning ``(B, C_out, *out_spatial)``.

The tiling rule
---------------
Windows sit on one global grid, anchored at the first voxel of the volume:
output window ``k`` (per axis) covers the voxels ``[k * out, (k + 1) * out)``
of the volume and reads ``[k * out - context, (k + 1) * out + context)``.
A block whose write region starts at voxel ``origin`` is given ``raw`` =
the write region grown by ``context`` on every side, and runs every window of
the grid that meets its write region. Where a window reads past the edges of
``raw`` (below it when ``origin`` is not a multiple of ``out``, above it when
the write region does not end on the grid) the window is filled with zeros,
in normalised space; the outputs are cropped to the write region.

Hence the whole-volume prediction (``raw`` = the volume padded by ``context``)
and a blockwise one run the very same windows on the very same inputs, and
agree bit for bit, whenever every block's write region starts on the grid
(``origin`` a multiple of ``out``) and ends on it or at the volume's end, the
blocks' padding outside the volume equals the whole run's, and the batch
size is the same (every model call gets exactly ``batch_size`` windows, the
last one filled up with zero windows, because a backend may round
differently for another batch size). For a model that is local (each output
voxel sees only its ``context``), any tiling gives the same values up to
floating point rounding.

"The volume" is whatever ``origin`` is measured from: a stage that predicts
a total ROI passes ``origin`` = write ROI offset - total ROI offset, in voxels.

Examples
--------
>>> import numpy as np
>>> model = load_model("python:numpy:negative")
>>> raw = normalize(np.arange(8, dtype=np.uint8).reshape(2, 2, 2), "scale01")
>>> out = predict_volume(model, raw, input_shape=(1, 1, 1), output_shape=(1, 1, 1), batch_size=4)
>>> out.shape, out.dtype
((1, 2, 2, 2), dtype('float32'))
>>> bool(np.all(out[0] == -raw))
True
>>> context_voxels((8, 10, 10), (4, 6, 6))
(2, 2, 2)
>>> to_storage(np.array([0.0, 0.5, 1.2], np.float32), "uint8").tolist()
[0, 128, 255]
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import numpy as np

from workers.model_plugins import (  # noqa: F401
    _DEVICE,
    SCHEMES,
    Model,
    ModelError,
    _load_onnx,
    _load_python,
    _load_torchscript,
    _one_line,
    load_model,
)

__all__ = [
    "Model",
    "ModelError",
    "NORMALIZE_MODES",
    "STORAGE_DTYPES",
    "context_voxels",
    "load_model",
    "normalize",
    "predict_volume",
    "to_storage",
]

NORMALIZE_MODES = ("scale01", "scale11", "meanstd")
STORAGE_DTYPES = ("float32", "uint8")
# Integer ranges that scale01 / scale11 divide by.
_UNSIGNED_MAX = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def normalize(
    raw: np.ndarray, mode: str = "scale01", mean: float | None = None, std: float | None = None
) -> np.ndarray:
    """Raw intensities to the network's float32 input.

    Parameters
    ----------
    raw : ndarray
        uint8, uint16, float32 or float64 (``meanstd`` takes any integer too).
    mode : {"scale01", "scale11", "meanstd"}
        ``scale01``: uint8 / 255, uint16 / 65535, floats as they are.
        ``scale11``: the same range mapped to [-1, 1] (floats: ``2 x - 1``).
        ``meanstd``: ``(x - mean) / std``, computed in float64.
    mean, std : float, optional
        Required by ``meanstd``; ``std`` must be positive.

    Examples
    --------
    >>> import numpy as np
    >>> normalize(np.array([0, 51, 255], np.uint8), "scale11").tolist()
    [-1.0, -0.6000000238418579, 1.0]
    >>> normalize(np.array([10, 20], np.int32), "meanstd", mean=15, std=5).tolist()
    [-1.0, 1.0]
    """
    raw = np.asarray(raw)
    dtype = raw.dtype
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"unknown normalisation mode {mode!r}; expected one of {', '.join(NORMALIZE_MODES)}")
    if mode == "meanstd":
        if mean is None or std is None:
            raise ValueError("normalisation mode 'meanstd' needs both mean and std")
        if not (math.isfinite(std) and std > 0 and math.isfinite(mean)):
            raise ValueError(f"normalisation mode 'meanstd' needs a finite mean and a positive std, got mean={mean}, std={std}")
        if not (dtype in _FLOATS or (np.issubdtype(dtype, np.integer) and dtype != np.bool_)):
            raise ValueError(
                f"cannot normalise raw of dtype {dtype} with mode 'meanstd' "
                f"(modes: scale01 and scale11 take uint8, uint16, float32, float64; meanstd also any integer)"
            )
        return ((raw.astype(np.float64) - float(mean)) / float(std)).astype(np.float32)
    if dtype in _UNSIGNED_MAX:
        top = np.float32(_UNSIGNED_MAX[dtype])
        if mode == "scale01":
            return raw.astype(np.float32) / top
        # 2 x - top is an exact integer in float32, so the one division rounds once
        return (raw.astype(np.float32) * np.float32(2) - top) / top
    if dtype in _FLOATS:
        data = raw.astype(np.float32)
        if mode == "scale01":
            return data
        return data * np.float32(2) - np.float32(1)
    raise ValueError(
        f"cannot normalise raw of dtype {dtype} with mode {mode!r} "
        f"(modes: scale01 and scale11 take uint8, uint16, float32, float64; meanstd also any integer)"
    )


def context_voxels(input_shape: Sequence[int], output_shape: Sequence[int]) -> tuple[int, ...]:
    """Voxels of input a model needs on each side of its output: ``(input - output) // 2``.

    Raises ``ValueError`` unless ``input - output`` is even and non-negative
    on every axis.

    >>> context_voxels((44, 44), (40, 36))
    (2, 4)
    """
    input_shape = tuple(int(s) for s in input_shape)
    output_shape = tuple(int(s) for s in output_shape)
    if len(input_shape) != len(output_shape):
        raise ValueError(f"input_shape {list(input_shape)} and output_shape {list(output_shape)} differ in length")
    if any(s <= 0 for s in input_shape + output_shape):
        raise ValueError(f"input_shape {list(input_shape)} and output_shape {list(output_shape)} must be positive")
    difference = [i - o for i, o in zip(input_shape, output_shape)]
    if any(d < 0 or d % 2 for d in difference):
        raise ValueError(
            f"input_shape {list(input_shape)} - output_shape {list(output_shape)} = {difference} "
            f"must be even and non-negative on every axis (the output is centred in the input)"
        )
    return tuple(d // 2 for d in difference)


def predict_volume(
    model: Callable[[np.ndarray], np.ndarray],
    raw: np.ndarray,
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    batch_size: int = 1,
    in_channels: int = 1,
    origin: Sequence[int] | None = None,
    total_shape: Sequence[int] | None = None,
    out_channels: int | None = None,
) -> np.ndarray:
    """Predict a block's write region window by window.

    Parameters
    ----------
    model : Model or callable
        Maps float32 ``(B, in_channels, *input_shape)`` to
        ``(B, C_out, *output_shape)``.
    raw : ndarray of float
        Normalised input: the write region grown by ``context`` on every side,
        shape ``[C,] write_shape + 2 * context`` (the channel axis may be left
        out when ``in_channels`` is 1). Values outside the volume are the
        caller's padding.
    input_shape, output_shape : sequence of int
        The model's window shapes; the output is centred in the input.
    batch_size : int
        Windows per model call. Every call holds exactly ``batch_size``
        windows: the last one is filled up with windows of zeros, whose
        outputs are dropped.
    in_channels : int
        Channels of ``raw``.
    origin : sequence of int, optional
        Offset in voxels of the write region from the volume's first voxel,
        which anchors the window grid (default zeros). Any value works; see
        the module docstring for when blockwise equals whole bit for bit.
    total_shape : sequence of int, optional
        The volume's shape in voxels; when given, the write region must lie
        inside it.
    out_channels : int, optional
        When given, the model must return this many channels.

    Returns
    -------
    ndarray of float32, shape ``(C_out, *write_shape)``

    Raises
    ------
    ModelError
        If the first batch's output does not have ``output_shape`` (or
        ``out_channels``), or any later batch differs from the first.
    """
    context = context_voxels(input_shape, output_shape)
    input_shape = tuple(int(s) for s in input_shape)
    output_shape = tuple(int(s) for s in output_shape)
    dims = len(output_shape)
    spec = getattr(model, "spec", repr(model))
    raw = np.asarray(raw)
    if raw.dtype.kind != "f":
        raise ValueError(f"raw must be normalised floating point (see normalize), got dtype {raw.dtype}")
    if raw.ndim == dims and in_channels == 1:
        raw = raw[np.newaxis]
    if raw.ndim != dims + 1 or raw.shape[0] != in_channels:
        raise ValueError(
            f"raw of shape {raw.shape} does not match in_channels={in_channels} and {dims}-d windows; "
            f"expected (C={in_channels}, *spatial)"
        )
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch_size = int(batch_size)
    write_shape = tuple(s - 2 * c for s, c in zip(raw.shape[1:], context))
    if any(w <= 0 for w in write_shape):
        raise ValueError(
            f"raw spatial shape {raw.shape[1:]} leaves no write region after a context of {context} on each side"
        )
    origin = (0,) * dims if origin is None else tuple(int(o) for o in origin)
    if len(origin) != dims:
        raise ValueError(f"origin {list(origin)} does not have {dims} axes")
    if total_shape is not None:
        total_shape = tuple(int(t) for t in total_shape)
        if len(total_shape) != dims or any(
            o < 0 or o + w > t for o, w, t in zip(origin, write_shape, total_shape)
        ):
            raise ValueError(
                f"write region at {list(origin)} of shape {list(write_shape)} is not inside the volume "
                f"of shape {list(total_shape)}"
            )

    # Per axis, the grid windows meeting [origin, origin + write): their
    # start in write-region coordinates, which is also where their input
    # starts in raw coordinates (raw starts `context` before the write region).
    starts_per_axis = []
    for o, w, out in zip(origin, write_shape, output_shape):
        first = (o // out) * out - o
        starts_per_axis.append(range(first, w, out))
    windows = list(itertools.product(*starts_per_axis))

    prediction: np.ndarray | None = None
    channels = None
    for begin in range(0, len(windows), batch_size):
        chunk = windows[begin : begin + batch_size]
        # The last batch is filled up with zero windows: some backends (torch
        # on the CPU) round differently for another batch size, and every
        # call having batch_size windows keeps blockwise == whole bit for bit.
        batch = np.zeros((batch_size, in_channels) + input_shape, np.float32)
        for index, start in enumerate(chunk):
            source, target = _overlap(start, input_shape, raw.shape[1:])
            if source is not None:
                batch[(index, slice(None)) + target] = raw[(slice(None),) + source]
        out = np.asarray(model(batch))
        if out.ndim != dims + 2 or out.shape[0] != batch_size or out.shape[2:] != output_shape:
            shape = tuple(out.shape[2:]) if out.ndim == dims + 2 else tuple(out.shape)
            raise ModelError(
                f"model {spec}: model output shape {list(shape)} does not match output_shape "
                f"{list(output_shape)} in the config (batch of shape {batch.shape} gave {out.shape})"
            )
        if channels is None:
            channels = out.shape[1]
            if out_channels is not None and channels != out_channels:
                raise ModelError(
                    f"model {spec}: model output has {channels} channels; the config says out_channels={out_channels}"
                )
            prediction = np.empty((channels,) + write_shape, np.float32)
        elif out.shape[1] != channels:
            raise ModelError(f"model {spec}: a batch returned {out.shape[1]} channels after {channels} before")
        for index, start in enumerate(chunk):
            source, target = _overlap(start, output_shape, write_shape)
            prediction[(slice(None),) + source] = out[(index, slice(None)) + target]
    assert prediction is not None  # write_shape is non-empty, so there was a window
    return prediction


def _overlap(
    start: Sequence[int], window: Sequence[int], bounds: Sequence[int]
) -> tuple[tuple[slice, ...] | None, tuple[slice, ...]]:
    """Slices of ``[0, bounds)`` and of the window ``[start, start + window)`` where they meet."""
    outer, inner = [], []
    for s, size, bound in zip(start, window, bounds):
        low, high = max(s, 0), min(s + size, bound)
        if low >= high:
            return None, ()
        outer.append(slice(low, high))
        inner.append(slice(low - s, high - s))
    return tuple(outer), tuple(inner)


def to_storage(prediction: np.ndarray, dtype: str) -> np.ndarray:
    """The prediction as stored: ``float32`` as it is, or ``uint8``.

    ``uint8`` clips to [0, 1], scales by 255 and rounds half to even
    (``np.rint``); a NaN cannot be stored as uint8 and raises ``ValueError``.

    >>> import numpy as np
    >>> to_storage(np.array([-1.0, 0.002, 0.998, 2.0]), "uint8").tolist()
    [0, 1, 254, 255]
    """
    prediction = np.asarray(prediction)
    if dtype == "float32":
        return prediction.astype(np.float32, copy=False)
    if dtype == "uint8":
        scaled = np.clip(prediction.astype(np.float32, copy=False), 0, 1) * np.float32(255)
        if np.isnan(scaled).any():
            raise ValueError("the prediction holds NaN values, which uint8 storage cannot represent")
        return np.rint(scaled).astype(np.uint8)
    raise ValueError(f"unknown storage dtype {dtype!r}; expected one of {', '.join(STORAGE_DTYPES)}")
