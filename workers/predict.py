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

import importlib
import itertools
import math
import os
import re
import warnings
from typing import Any, Callable, Sequence

import numpy as np

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
SCHEMES = ("torchscript", "onnx", "python")

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")
# Integer ranges that scale01 / scale11 divide by.
_UNSIGNED_MAX = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class ModelError(ValueError):
    """A model that cannot be loaded or that does not fit the configuration."""


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Model:
    """A loaded network: call it on a float32 batch ``(B, C_in, *spatial)``.

    Attributes
    ----------
    spec : str
        The spec it was loaded from, e.g. ``"onnx:/models/unet.onnx"``.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    scheme : str
        ``"torchscript"``, ``"onnx"`` or ``"python"``.

    Load one per worker process and keep it: loading is slow, and loaded
    torch modules and onnxruntime sessions do not pickle.
    """

    def __init__(self, spec: str, device: str, scheme: str, run: Callable[[np.ndarray], Any]) -> None:
        self.spec = spec
        self.device = device
        self.scheme = scheme
        self._run = run

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim < 3:
            raise ValueError(f"model {self.spec}: a batch is (B, C, *spatial), got shape {batch.shape}")
        out = np.asarray(self._run(batch))
        if out.ndim != batch.ndim or out.shape[0] != batch.shape[0]:
            raise ModelError(
                f"model {self.spec} returned shape {out.shape} for a batch of shape {batch.shape}; "
                f"expected (B={batch.shape[0]}, C_out, *spatial)"
            )
        return out.astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"Model({self.spec!r}, device={self.device!r})"


def load_model(spec: str, device: str = "cpu") -> Model:
    """Load ``spec`` (``torchscript:PATH``, ``onnx:PATH`` or ``python:module:function``) on ``device``.

    Everything that can be checked before running is checked here: the
    scheme, the file, the backend package, the device.

    Parameters
    ----------
    spec : str
        Which model, as ``scheme:target``.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. A ``python:`` callable runs
        as it is; the device is recorded for it and not checked.

    Returns
    -------
    Model

    Raises
    ------
    ModelError
        With a one-line message naming the spec: unknown scheme, missing or
        unloadable file, python target not importable or not callable,
        backend not installed, CUDA requested where none is available.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ModelError(f"model spec {spec!r} is not 'scheme:target' with a scheme among {', '.join(SCHEMES)}")
    scheme, target = spec.split(":", 1)
    if scheme not in SCHEMES:
        raise ModelError(f"model {spec}: unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    match = _DEVICE.match(device) if isinstance(device, str) else None
    if match is None:
        raise ModelError(f"model {spec}: device {device!r} is not 'cpu', 'cuda' or 'cuda:N'")
    if scheme == "python":
        return Model(spec, device, scheme, _load_python(spec, target))
    if not target:
        raise ModelError(f"model {spec}: no file given after '{scheme}:'")
    if not os.path.exists(target):
        raise ModelError(f"model {spec}: file {target} does not exist")
    if not os.path.isfile(target):
        raise ModelError(f"model {spec}: {target} is not a file")
    gpu = match.group(1) == "cuda"
    index = int(match.group(2) or 0)
    if scheme == "torchscript":
        return Model(spec, device, scheme, _load_torchscript(spec, target, device, gpu, index))
    return Model(spec, device, scheme, _load_onnx(spec, target, device, gpu, index))


def _load_python(spec: str, target: str) -> Callable[[np.ndarray], Any]:
    module_name, _, attribute = target.rpartition(":")
    if not module_name or not attribute:
        raise ModelError(f"model {spec}: expected 'python:module.sub:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as error:  # a module that fails while importing is as unusable as a missing one
        raise ModelError(f"model {spec}: cannot import {module_name} ({_one_line(error)})") from error
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelError(f"model {spec}: {module_name} has no attribute {attribute}") from None
    if not callable(obj):
        raise ModelError(f"model {spec}: {module_name}:{attribute} is a {type(obj).__name__}, not callable")
    return obj


def _load_torchscript(spec: str, path: str, device: str, gpu: bool, index: int) -> Callable[[np.ndarray], Any]:
    try:
        import torch
    except ImportError as error:
        raise ModelError(f"model {spec}: torch is not installed; pip install blockseg[torch]") from error
    if gpu:
        if not torch.cuda.is_available():
            raise ModelError(f"model {spec}: device {device} requested but torch sees no GPU (torch.cuda.is_available() is False)")
        if index >= torch.cuda.device_count():
            raise ModelError(f"model {spec}: device {device} requested but torch sees {torch.cuda.device_count()} GPU(s)")
    torch_device = torch.device(device)
    try:
        with warnings.catch_warnings():
            # torch >= 2.10 flags TorchScript as deprecated; it is still the format we read
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load", category=DeprecationWarning)
            module = torch.jit.load(path, map_location=torch_device)
    except Exception as error:
        raise ModelError(f"model {spec}: {path} does not load as TorchScript ({_one_line(error)})") from error
    module.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module(torch.from_numpy(batch).to(torch_device))
        if not isinstance(out, torch.Tensor):
            raise ModelError(f"model {spec} returned a {type(out).__name__}, not one tensor")
        return out.detach().to("cpu", torch.float32).numpy()

    return run


def _load_onnx(spec: str, path: str, device: str, gpu: bool, index: int) -> Callable[[np.ndarray], Any]:
    try:
        import onnxruntime
    except ImportError as error:
        raise ModelError(f"model {spec}: onnxruntime is not installed; pip install blockseg[onnx]") from error
    providers: list[Any] = ["CPUExecutionProvider"]
    if gpu:
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise ModelError(
                f"model {spec}: device {device} requested but onnxruntime has no CUDAExecutionProvider "
                f"(install onnxruntime-gpu on a machine with a GPU)"
            )
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    try:
        session = onnxruntime.InferenceSession(path, providers=providers)
    except Exception as error:
        raise ModelError(f"model {spec}: {path} does not load as ONNX ({_one_line(error)})") from error
    if gpu and "CUDAExecutionProvider" not in session.get_providers():
        # onnxruntime falls back to the CPU silently when the CUDA libraries fail to load
        raise ModelError(f"model {spec}: device {device} requested but onnxruntime could not start CUDA")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"model {spec}: the ONNX graph has {len(inputs)} inputs; expected one")
    name = inputs[0].name
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}.get(inputs[0].type)
    if dtype is None:
        raise ModelError(f"model {spec}: the ONNX input {name!r} is {inputs[0].type}; expected a float tensor")
    batch_dim = inputs[0].shape[0] if inputs[0].shape else None
    # A graph exported with a fixed batch size takes batches of exactly that size.
    fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None

    def run(batch: np.ndarray) -> np.ndarray:
        batch = batch.astype(dtype, copy=False)
        if fixed_batch is None or batch.shape[0] == fixed_batch:
            return session.run(None, {name: batch})[0]
        parts = []
        for start in range(0, batch.shape[0], fixed_batch):
            part = batch[start : start + fixed_batch]
            short = fixed_batch - part.shape[0]
            if short:
                part = np.concatenate([part, np.zeros((short,) + part.shape[1:], part.dtype)])
            parts.append(session.run(None, {name: part})[0][: fixed_batch - short])
        return np.concatenate(parts)

    return run


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
