"""The predict stage: blockwise = whole, predicted affinities feeding the pipeline, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from blockseg.config import load_config
from blockseg.pipeline import InputError, open_run, run_pipeline
from blockseg.volume import create_volume, open_volume
from helpers import read_dataset, write_config
from workers.predict import normalize, predict_volume, to_storage

import toy_models

INPUT, OUTPUT = [10, 18, 18], [8, 16, 16]


def _config(folder, inputs, raw_url=None, **predict):
    settings = {
        "model": "python:toy_models:membrane_affinities",
        "input_shape": INPUT,
        "output_shape": OUTPUT,
        "outputs": {"affinities": 3},
        **predict,
    }
    path = write_config(folder, inputs, block_voxels=(16, 48, 48), stages__predict=settings)
    text = path.read_text().replace(f"  affinities: {inputs}/affinities\n", f"  raw: {raw_url or f'{inputs}/raw'}\n")
    path.write_text(text)
    return load_config(path)


def _whole(raw: np.ndarray, dtype: str) -> np.ndarray:
    data = normalize(raw, "scale01")
    context = [(i - o) // 2 for i, o in zip(INPUT, OUTPUT)]
    padded = np.pad(data, [(c, c) for c in context])
    return to_storage(predict_volume(toy_models.membrane_affinities, padded, INPUT, OUTPUT, batch_size=2), dtype)


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_blockwise_prediction_equals_whole(tmp_path, small_inputs, client, dtype):
    # 32 x 128 x 128 in blocks of 16 x 48 x 48: neither a multiple of the block nor of the output window
    config = _config(tmp_path, small_inputs, output_dtype=dtype)
    run = open_run(config)
    reports = run_pipeline(run, client, stages=["predict"])
    run.store.close()
    assert reports["predict"].total == 2 * 3 * 3
    got = read_dataset(run.dataset_url("affinities"))
    expected = _whole(read_dataset(f"{small_inputs}/raw"), dtype)
    assert got.dtype == np.dtype(dtype) and got.shape == expected.shape == (3, 32, 128, 128)
    if dtype == "uint8":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert got.std() > 0


def test_predicted_affinities_feed_the_segmentation(tmp_path, small_inputs, client):
    config = _config(tmp_path, small_inputs)
    run = open_run(config)
    reports = run_pipeline(run, client)
    run.store.close()
    assert list(reports)[:2] == ["predict", "fragments"]
    assert "check" not in reports  # predicted affinities are in range by construction
    segmentation = read_dataset(run.segmentation_url(0.5))
    assert len(np.unique(segmentation)) > 10
    # a toy model that only sees brightness still separates cells far better than chance
    assert run.scores["best"]["voi_sum"] < 3.0
    again = open_run(config)
    second = run_pipeline(again, client)
    again.store.close()
    assert sum(r.submitted for r in second.values()) == 0


@pytest.mark.parametrize("change, message", [
    ({"model": "torchscript:no_such_model.pt"}, "no_such_model.pt"),
    ({"model": "onnx:garbage.onnx"}, "garbage.onnx"),
    ({"model": "python:toy_models:no_such_function"}, "no_such_function"),
    ({"model": "python:toy_models:wrong_shape"}, "does not match output_shape"),
    ({"device": "cuda", "model": "torchscript:conv.pt"}, "GPU"),
])
def test_bad_model_is_refused_before_any_block(tmp_path, small_inputs, client, change, message):
    if change.get("device") == "cuda":
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
        torch.manual_seed(0)
        torch.jit.script(torch.nn.Conv3d(1, 3, 3)).save(str(tmp_path / "conv.pt"))
    (tmp_path / "garbage.onnx").write_bytes(b"this is not a model")
    config = _config(tmp_path, small_inputs, **change)
    run = open_run(config)
    with pytest.raises(InputError, match=message):
        run_pipeline(run, client)
    run.store.close()
    assert not (tmp_path / "out" / "volumes.zarr" / "affinities").exists()


def test_worker_lost_while_the_model_is_tried_does_not_end_the_stage(tmp_path, small_inputs):
    """The probe's broadcast meets a dead worker: the stage goes on with its replacement."""
    from blockseg.cluster import open_client
    from blockseg.config import ClusterConfig

    config = _config(tmp_path, small_inputs, model="python:toy_models:dies_on_the_probe")
    with open_client(ClusterConfig(local={"workers": 1, "memory_limit": "1GiB", "dashboard": False}), quiet=True) as own:
        run = open_run(config)
        reports = run_pipeline(run, own, stages=["predict"])
        run.store.close()
    assert reports["predict"].total == reports["predict"].submitted == 2 * 3 * 3
    got = read_dataset(run.dataset_url("affinities"))
    np.testing.assert_array_equal(got, _whole(read_dataset(f"{small_inputs}/raw"), str(got.dtype)))
    assert got.dtype == np.uint8 and got.std() > 0


def test_raw_dtype_the_normaliser_does_not_handle(tmp_path, small_inputs):
    raw = open_volume(f"{small_inputs}/raw")
    bad = create_volume(f"{tmp_path}/bad.zarr/raw", raw.roi, raw.voxel_size, np.int64, (32, 64, 64))
    bad.write(raw.roi, raw.read(raw.roi).astype(np.int64))
    config = _config(tmp_path, small_inputs, raw_url=f"{tmp_path}/bad.zarr/raw")
    with pytest.raises(InputError, match="int64"):
        open_run(config)
    assert not (tmp_path / "out" / "volumes.zarr").exists()


def test_killed_prediction_resumes_to_identical_output(tmp_path, demo_inputs):
    """Issue 7, check 2: the predict stage resumes like every other stage."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from test_resume_after_kill import _done

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    folders = {}
    for name in ("fresh", "killed"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        path = write_config(
            folders[name], demo_inputs, block_voxels=(16, 32, 32), cluster={"local": {"workers": 2, "dashboard": False}},
            stages__predict={"model": "python:toy_models:membrane_affinities", "input_shape": INPUT,
                             "output_shape": OUTPUT, "outputs": {"affinities": 3}},
        )
        text = path.read_text().replace(f"  affinities: {demo_inputs}/affinities\n", f"  raw: {demo_inputs}/raw\n")
        path.write_text(text)
    command = [sys.executable, "-m", "blockseg.cli", "run", "config.yaml", "--stages", "predict"]
    process = subprocess.Popen(command, cwd=folders["killed"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    db = folders["killed"] / "out" / "graph.db"
    total = 4 * 6 * 6
    deadline = time.time() + 300
    while _done(db, "predict") < total // 3:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = _done(db, "predict")
    assert 0 < partial < total
    for name in ("killed", "fresh"):
        result = subprocess.run(command, cwd=folders[name], env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        if name == "killed":
            assert f"{total - partial} block(s) done, {partial} already done" in result.stdout
    np.testing.assert_array_equal(
        read_dataset(folders["killed"] / "out" / "volumes.zarr" / "affinities"),
        read_dataset(folders["fresh"] / "out" / "volumes.zarr" / "affinities"),
    )
