"""Tests of workers.predict: model plugins, normalisation, the blockwise window tiling."""

from __future__ import annotations

import itertools
import sys
import textwrap
import warnings

import numpy as np
import pytest

from workers.predict import (
    Model,
    ModelError,
    context_voxels,
    load_model,
    normalize,
    predict_volume,
    to_storage,
)

# Two valid 3x3x3 convolutions: the input window is the output window + 4.
INPUT_SHAPE = (8, 10, 9)
OUTPUT_SHAPE = (4, 6, 5)
CONTEXT = (2, 2, 2)
# Neither a multiple of the block shape nor of OUTPUT_SHAPE on any axis.
VOLUME_SHAPE = (13, 22, 19)
# Multiples of OUTPUT_SHAPE, so blocks run the same windows as the whole volume.
BLOCK_SHAPE = (8, 12, 10)
MODULE = "blockseg_predict_testnets"

# The network as numpy code, importable through a `python:` spec. It reads
# the weights saved beside it, the same ones the TorchScript and ONNX files hold.
NETS_SOURCE = textwrap.dedent(
    '''
    import itertools
    import pathlib

    import numpy as np

    _WEIGHTS = dict(np.load(pathlib.Path(__file__).with_name("weights.npz")))
    NOT_CALLABLE = 3


    def _conv(x, w, b):
        kernel = w.shape[2:]
        shape = tuple(s - k + 1 for s, k in zip(x.shape[2:], kernel))
        out = np.zeros((x.shape[0], w.shape[0]) + shape, np.float32)
        out += b.reshape((1, -1) + (1,) * len(shape))
        for offset in itertools.product(*(range(k) for k in kernel)):
            view = x[(slice(None), slice(None)) + tuple(slice(o, o + s) for o, s in zip(offset, shape))]
            out += np.einsum("oi,bi...->bo...", w[(slice(None), slice(None)) + offset], view)
        return out


    def net(x):
        hidden = np.maximum(_conv(x, _WEIGHTS["w1"], _WEIGHTS["b1"]), 0)
        return 1 / (1 + np.exp(-_conv(hidden, _WEIGHTS["w2"], _WEIGHTS["b2"])))


    def window_mean(x):
        """Not local: every output voxel sees the mean of its whole input window."""
        centre = x[:, :1, 2:-2, 2:-2, 2:-2]
        return centre + x.mean(axis=(1, 2, 3, 4), keepdims=True)


    def crop_one(x):
        """Crops 1 voxel per side where the config expects 2."""
        return x[:, :, 1:-1, 1:-1, 1:-1]
    '''
)


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w1": (rng.standard_normal((4, 1, 3, 3, 3)) * 0.4).astype(np.float32),
        "b1": (rng.standard_normal(4) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((2, 4, 3, 3, 3)) * 0.3).astype(np.float32),
        "b2": (rng.standard_normal(2) * 0.1).astype(np.float32),
    }


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A folder with the weights and the numpy nets module, on sys.path."""
    folder = tmp_path_factory.mktemp("models")
    np.savez(folder / "weights.npz", **_weights())
    (folder / f"{MODULE}.py").write_text(NETS_SOURCE)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


def _torch_net():
    torch = pytest.importorskip("torch")
    weights = _weights()

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv3d(1, 4, 3)
            self.conv2 = torch.nn.Conv3d(4, 2, 3)

        def forward(self, x):
            return torch.sigmoid(self.conv2(torch.relu(self.conv1(x))))

    net = Net().eval()
    with torch.no_grad():
        for conv, w, b in ((net.conv1, "w1", "b1"), (net.conv2, "w2", "b2")):
            conv.weight.copy_(torch.from_numpy(weights[w]))
            conv.bias.copy_(torch.from_numpy(weights[b]))
    return net


@pytest.fixture(scope="session")
def torchscript_path(model_dir):
    torch = pytest.importorskip("torch")
    path = model_dir / "net.pt"
    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript
            torch.jit.save(torch.jit.script(_torch_net()), str(path))
    return path


def _onnx_net(path, batch: int | str = "batch") -> None:
    """The same network written as an ONNX graph with onnx.helper (no torch needed)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weights = _weights()
    nodes = [
        helper.make_node("Conv", ["raw", "w1", "b1"], ["h1"], kernel_shape=[3, 3, 3]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("Conv", ["h2", "w2", "b2"], ["h3"], kernel_shape=[3, 3, 3]),
        helper.make_node("Sigmoid", ["h3"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "net",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [batch, 1, "z", "y", "x"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 2, "oz", "oy", "ox"])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # old enough for any onnxruntime >= 1.17
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="session")
def onnx_path(model_dir):
    pytest.importorskip("onnxruntime")
    path = model_dir / "net.onnx"
    if not path.exists():
        _onnx_net(path)
    return path


@pytest.fixture(params=["python", "torchscript", "onnx"])
def net_spec(request, model_dir) -> str:
    if request.param == "python":
        return f"python:{MODULE}:net"
    if request.param == "torchscript":
        return f"torchscript:{request.getfixturevalue('torchscript_path')}"
    return f"onnx:{request.getfixturevalue('onnx_path')}"


def _volume(shape=VOLUME_SHAPE, seed=1) -> np.ndarray:
    raw = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    return normalize(raw, "scale11")


def _whole(model, volume, batch_size=1, **kwargs) -> np.ndarray:
    padded = np.pad(volume, [(c, c) for c in CONTEXT])
    return predict_volume(
        model, padded, INPUT_SHAPE, OUTPUT_SHAPE, batch_size=batch_size, total_shape=volume.shape, **kwargs
    )


def _blockwise(model, volume, block_shape, batch_size=1, storage="float32") -> np.ndarray:
    """What the predict stage does: each block reads its write region grown by the context."""
    padded = np.pad(volume, [(c, c) for c in CONTEXT])  # zeros outside the volume
    result = None
    for start in itertools.product(*(range(0, s, b) for s, b in zip(volume.shape, block_shape))):
        stop = tuple(min(a + b, s) for a, b, s in zip(start, block_shape, volume.shape))
        # padded index = volume index + context, so the read region starts at `start`
        raw = padded[tuple(slice(a, e + 2 * c) for a, e, c in zip(start, stop, CONTEXT))]
        block = predict_volume(
            model, raw, INPUT_SHAPE, OUTPUT_SHAPE, batch_size=batch_size, origin=start, total_shape=volume.shape
        )
        block = to_storage(block, storage)
        if result is None:
            result = np.zeros((block.shape[0],) + volume.shape, block.dtype)
        result[(slice(None),) + tuple(slice(a, e) for a, e in zip(start, stop))] = block
    return result


def _reference(volume) -> np.ndarray:
    """The numpy net on the whole zero-padded volume at once, no windows."""
    nets = pytest.importorskip(MODULE)
    padded = np.pad(volume, [(c, c) for c in CONTEXT])
    return nets.net(padded[np.newaxis, np.newaxis])[0]


# ---- the blockwise contract -------------------------------------------------


def test_whole_volume_matches_the_network_without_windows(net_spec):
    model = load_model(net_spec)
    volume = _volume()
    prediction = _whole(model, volume)
    assert prediction.dtype == np.float32
    assert prediction.shape == (2,) + VOLUME_SHAPE
    np.testing.assert_allclose(prediction, _reference(volume), atol=1e-5)


def test_blockwise_equals_whole(net_spec):
    model = load_model(net_spec)
    volume = _volume()
    whole = _whole(model, volume)
    blocks = _blockwise(model, volume, BLOCK_SHAPE)
    np.testing.assert_allclose(blocks, whole, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(_blockwise(model, volume, BLOCK_SHAPE, storage="uint8"), to_storage(whole, "uint8"))


def test_blockwise_equals_whole_bit_for_bit(net_spec):
    # blocks on the window grid run the very windows of the whole volume,
    # every call with batch_size windows, so nothing may differ at all
    model = load_model(net_spec)
    volume = _volume(seed=2)
    for batch_size in (1, 4):
        whole = _whole(model, volume, batch_size=batch_size)
        np.testing.assert_array_equal(_blockwise(model, volume, BLOCK_SHAPE, batch_size=batch_size), whole)


@pytest.mark.parametrize("block_shape", [(7, 9, 8), (5, 22, 6)])
def test_blocks_off_the_grid_agree_for_a_local_model(net_spec, block_shape):
    # write regions that do not start on the window grid run other windows;
    # a local network still gives the same values up to rounding
    model = load_model(net_spec)
    volume = _volume(seed=3)
    np.testing.assert_allclose(_blockwise(model, volume, block_shape), _whole(model, volume), rtol=0, atol=1e-5)


def test_blocks_run_the_same_global_windows(model_dir):
    # a model that is not local gives the whole-volume result only if each
    # block runs exactly the windows the whole volume runs
    model = load_model(f"python:{MODULE}:window_mean")
    volume = _volume(seed=4)
    whole = _whole(model, volume)
    np.testing.assert_array_equal(_blockwise(model, volume, BLOCK_SHAPE), whole)
    assert not np.allclose(_blockwise(model, volume, (7, 9, 8)), whole, atol=1e-3)


def test_windows_sit_on_the_grid_anchored_at_the_volume_start():
    seen = []

    def record(batch):
        seen.extend(float(v) for v in batch[:, 0, 0, 1, 1])  # first z of the window, inside the volume in y, x
        return batch[:, :, 1:-1, 1:-1, 1:-1]

    # raw holds the global coordinate along z; context 1, output 2 per axis
    volume = np.broadcast_to(np.arange(1, 11, dtype=np.float32)[:, None, None], (10, 2, 2))
    padded = np.pad(volume, 1)
    origin, stop = 3, 8  # write region z in [3, 8): windows start at 2, 4, 6
    raw = padded[origin : stop + 2, 0:4, 0:4]
    out = predict_volume(record, raw, (4, 4, 4), (2, 2, 2), origin=(origin, 0, 0), total_shape=(10, 2, 2))
    # first input voxel of each window: global z = start - 1, value z + 1 (0 below raw)
    assert seen == [0.0, 4.0, 6.0]
    np.testing.assert_array_equal(out[0], volume[origin:stop])


@pytest.mark.parametrize("batch_size", [3, 5])
def test_batch_size_does_not_change_the_result(net_spec, batch_size):
    model = load_model(net_spec)
    volume = _volume(seed=5)
    np.testing.assert_allclose(
        _whole(model, volume, batch_size=batch_size), _whole(model, volume, batch_size=1), rtol=0, atol=1e-6
    )


def test_channels_in_and_out():
    def swap(batch):
        return batch[:, ::-1] * 2

    raw = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6)
    out = predict_volume(swap, raw, (2, 3, 2), (2, 3, 2), batch_size=2, in_channels=2, out_channels=2)
    np.testing.assert_array_equal(out, raw[::-1] * 2)
    with pytest.raises(ValueError, match="in_channels=3"):
        predict_volume(swap, raw, (2, 3, 2), (2, 3, 2), in_channels=3)
    with pytest.raises(ModelError, match="out_channels=4"):
        predict_volume(swap, raw, (2, 3, 2), (2, 3, 2), in_channels=2, out_channels=4)


def test_torchscript_and_onnx_agree(torchscript_path, onnx_path):
    volume = _volume(seed=6)
    torch_prediction = _whole(load_model(f"torchscript:{torchscript_path}"), volume, batch_size=2)
    onnx_prediction = _whole(load_model(f"onnx:{onnx_path}"), volume, batch_size=2)
    np.testing.assert_allclose(torch_prediction, onnx_prediction, rtol=0, atol=1e-4)


def test_onnx_exported_by_torch_agrees_with_torchscript(tmp_path, torchscript_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "exported.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated in torch >= 2.9
        torch.onnx.export(
            _torch_net(),
            (torch.zeros((1, 1) + INPUT_SHAPE),),
            str(path),
            dynamo=False,
            input_names=["raw"],
            output_names=["out"],
            dynamic_axes={"raw": {0: "batch"}, "out": {0: "batch"}},
        )
    volume = _volume(seed=7)
    exported = _whole(load_model(f"onnx:{path}"), volume, batch_size=3)
    scripted = _whole(load_model(f"torchscript:{torchscript_path}"), volume, batch_size=3)
    np.testing.assert_allclose(exported, scripted, rtol=0, atol=1e-4)


def test_onnx_with_a_fixed_batch_size_takes_any_batch(tmp_path, onnx_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "batch1.onnx"
    _onnx_net(path, batch=1)
    volume = _volume(seed=8)
    fixed = _whole(load_model(f"onnx:{path}"), volume, batch_size=3)
    np.testing.assert_allclose(fixed, _whole(load_model(f"onnx:{onnx_path}"), volume), rtol=0, atol=1e-6)


def test_model_attributes(model_dir):
    model = load_model(f"python:{MODULE}:net", device="cuda:1")
    assert isinstance(model, Model)
    assert (model.spec, model.device, model.scheme) == (f"python:{MODULE}:net", "cuda:1", "python")
    out = model(np.zeros((2, 1, 5, 5, 5), np.float64))
    assert out.dtype == np.float32 and out.shape == (2, 2, 1, 1, 1)


# ---- errors -----------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["torchscript", "onnx"])
def test_missing_file(tmp_path, scheme):
    spec = f"{scheme}:{tmp_path / 'absent.bin'}"
    with pytest.raises(ModelError, match="does not exist") as error:
        load_model(spec)
    assert spec in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("scheme,backend", [("torchscript", "torch"), ("onnx", "onnxruntime")])
def test_corrupt_file(tmp_path, scheme, backend):
    pytest.importorskip(backend)
    path = tmp_path / "corrupt.bin"
    path.write_bytes(b"\x00\x01 this is not a model \xff" * 50)
    spec = f"{scheme}:{path}"
    with pytest.raises(ModelError, match="does not load") as error:
        load_model(spec)
    assert spec in str(error.value) and "\n" not in str(error.value)


def test_onnx_file_given_as_torchscript(onnx_path):
    pytest.importorskip("torch")
    with pytest.raises(ModelError, match="does not load as TorchScript"):
        load_model(f"torchscript:{onnx_path}")


@pytest.mark.parametrize("spec", ["keras:/models/unet.h5", "unet.pt", ""])
def test_unknown_scheme(spec):
    with pytest.raises(ModelError, match="scheme"):
        load_model(spec)


@pytest.mark.parametrize(
    "target,message",
    [
        ("blockseg_no_such_module_xyz:net", "cannot import"),
        (f"{MODULE}:no_such_function", "has no attribute"),
        (f"{MODULE}:NOT_CALLABLE", "not callable"),
        (MODULE, "python:module.sub:function"),
    ],
)
def test_python_target_not_usable(model_dir, target, message):
    with pytest.raises(ModelError, match=message) as error:
        load_model(f"python:{target}")
    assert f"python:{target}" in str(error.value)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", "cuda:"])
def test_bad_device_string(model_dir, device):
    with pytest.raises(ModelError, match="device"):
        load_model(f"python:{MODULE}:net", device=device)


@pytest.mark.parametrize("scheme,module,extra", [("torchscript", "torch", "torch"), ("onnx", "onnxruntime", "onnx")])
def test_backend_not_installed(tmp_path, monkeypatch, scheme, module, extra):
    path = tmp_path / "model.bin"
    path.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ModelError, match=rf"pip install blockseg\[{extra}\]"):
        load_model(f"{scheme}:{path}")


def test_cuda_without_gpu_torchscript(torchscript_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is available")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ModelError, match="no GPU") as error:
            load_model(f"torchscript:{torchscript_path}", device=device)
        assert str(torchscript_path) in str(error.value)


def test_cuda_without_gpu_onnx(onnx_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has a CUDA provider")
    with pytest.raises(ModelError, match="CUDAExecutionProvider"):
        load_model(f"onnx:{onnx_path}", device="cuda")


def test_output_shape_mismatch_is_caught_on_the_first_batch(model_dir):
    nets = pytest.importorskip(MODULE)
    calls = []

    def counted(batch):
        calls.append(batch.shape[0])
        return nets.crop_one(batch)

    raw = np.zeros(tuple(s + 2 * c for s, c in zip((16, 16, 16), CONTEXT)), np.float32)
    with pytest.raises(ModelError, match=r"model output shape \[6, 8, 7\] does not match output_shape \[4, 6, 5\]"):
        predict_volume(counted, raw, INPUT_SHAPE, OUTPUT_SHAPE, batch_size=2)
    assert calls == [2]


def test_output_shape_mismatch_of_a_real_network(net_spec):
    model = load_model(net_spec)
    raw = np.zeros((14, 14, 13), np.float32)
    # the network crops 2 per side, the config says 3
    with pytest.raises(ModelError, match="does not match output_shape") as error:
        predict_volume(model, raw, (10, 10, 9), (4, 4, 3))
    assert net_spec in str(error.value)


def test_predict_volume_rejects_bad_arguments():
    identity = lambda batch: batch  # noqa: E731
    raw = np.zeros((6, 6, 6), np.float32)
    with pytest.raises(ValueError, match="even and non-negative"):
        predict_volume(identity, raw, (5, 5, 5), (2, 2, 2))
    with pytest.raises(ValueError, match="even and non-negative"):
        predict_volume(identity, raw, (2, 2, 2), (4, 4, 4))
    with pytest.raises(ValueError, match="normalised"):
        predict_volume(identity, raw.astype(np.uint8), (2, 2, 2), (2, 2, 2))
    with pytest.raises(ValueError, match="not inside the volume"):
        predict_volume(identity, raw, (2, 2, 2), (2, 2, 2), origin=(0, 0, 2), total_shape=(6, 6, 6))
    with pytest.raises(ValueError, match="no write region"):
        predict_volume(identity, raw, (8, 8, 8), (2, 2, 2))
    with pytest.raises(ValueError, match="batch_size"):
        predict_volume(identity, raw, (2, 2, 2), (2, 2, 2), batch_size=0)


# ---- normalisation and storage ----------------------------------------------


def test_normalize_scale01():
    for raw, expected in [
        (np.array([0, 51, 255], np.uint8), [0, np.float32(51) / np.float32(255), 1]),
        (np.array([0, 13107, 65535], np.uint16), [0, np.float32(13107) / np.float32(65535), 1]),
        (np.array([-0.5, 0.25, 2.0], np.float64), [-0.5, 0.25, 2.0]),
    ]:
        out = normalize(raw, "scale01")
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, np.array(expected, np.float32))
    np.testing.assert_allclose(normalize(np.array([51], np.uint8)), [0.2], rtol=1e-7)


def test_normalize_scale11():
    out = normalize(np.array([0, 51, 255], np.uint8), "scale11")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([-1, -0.6, 1], np.float32))
    np.testing.assert_array_equal(normalize(np.array([0, 65535], np.uint16), "scale11"), [-1, 1])
    np.testing.assert_array_equal(normalize(np.array([0.0, 0.25, 1.0], np.float32), "scale11"), [-1, -0.5, 1])


def test_normalize_meanstd():
    out = normalize(np.array([-5, 5, 15], np.int64), "meanstd", mean=5, std=10)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [-1, 0, 1])
    np.testing.assert_array_equal(normalize(np.array([128, 160], np.uint8), "meanstd", mean=128.0, std=64.0), [0, 0.5])
    np.testing.assert_array_equal(normalize(np.array([1.5], np.float32), "meanstd", mean=0.5, std=0.5), [2])
    with pytest.raises(ValueError, match="mean and std"):
        normalize(np.zeros(3, np.uint8), "meanstd", mean=1.0)
    with pytest.raises(ValueError, match="positive std"):
        normalize(np.zeros(3, np.uint8), "meanstd", mean=1.0, std=0.0)


@pytest.mark.parametrize(
    "dtype,mode",
    [
        (np.bool_, "scale01"),
        (np.complex64, "scale01"),
        (np.int64, "scale01"),
        (np.int16, "scale11"),
        (np.uint32, "scale01"),
        (np.float16, "scale01"),
        (np.bool_, "meanstd"),
        (np.complex128, "meanstd"),
    ],
)
def test_normalize_rejects_dtype(dtype, mode):
    with pytest.raises(ValueError, match=np.dtype(dtype).name) as error:
        normalize(np.zeros(4, dtype), mode, mean=0.0, std=1.0)
    assert "scale01" in str(error.value) and "meanstd" in str(error.value)


def test_normalize_unknown_mode():
    with pytest.raises(ValueError, match="scale01, scale11, meanstd"):
        normalize(np.zeros(3, np.uint8), "zscore")


def test_to_storage():
    prediction = np.array([-0.5, 0.0, 0.5, 1.0, 7.0, np.inf, -np.inf], np.float32)
    out = to_storage(prediction, "uint8")
    assert out.dtype == np.uint8
    # 0.5 * 255 = 127.5 rounds to the even 128
    assert out.tolist() == [0, 0, 128, 255, 255, 255, 0]
    assert to_storage(prediction, "float32") is prediction
    # a value scaling exactly to 126.5 rounds down to the even 126
    half = np.float32(126.5 / 255)
    assert half * np.float32(255) == np.float32(126.5)
    assert to_storage(np.array([half]), "uint8").tolist() == [126]
    with pytest.raises(ValueError, match="NaN"):
        to_storage(np.array([np.nan], np.float32), "uint8")
    with pytest.raises(ValueError, match="float32, uint8"):
        to_storage(prediction, "int16")


def test_context_voxels():
    assert context_voxels(INPUT_SHAPE, OUTPUT_SHAPE) == CONTEXT
    assert context_voxels((20, 132, 132), (4, 40, 40)) == (8, 46, 46)
    with pytest.raises(ValueError, match="even"):
        context_voxels((9, 9), (4, 4))
    with pytest.raises(ValueError, match="length"):
        context_voxels((9, 9), (4, 4, 4))
