"""The model plugins of :mod:`workers.predict`: TorchScript, ONNX and Python callables.

:func:`load_model` turns a spec string (``torchscript:PATH``,
``onnx:PATH`` or ``python:module.sub:function``) into a :class:`Model`, a
callable on float32 batches ``(B, C, *spatial)`` on the device asked for;
what cannot be loaded raises :class:`ModelError` with one line saying why.
torch and onnxruntime are imported only when a model of theirs is loaded.

Examples
--------
>>> import numpy as np
>>> model = load_model("python:numpy:negative")
>>> model(np.ones((1, 1, 2), np.float32)).tolist()
[[[-1.0, -1.0]]]
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
from typing import Any, Callable

import numpy as np


SCHEMES = ("torchscript", "onnx", "python")

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


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
