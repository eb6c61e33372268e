"""One run per output folder: refused while another runs, taken over when its holder is dead."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from blockseg import lock as lock_module
from blockseg.demo import write_demo_config
from blockseg.lock import LOCK_NAME, OutputLock, OutputLocked, read_lock, status_line


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def records():
    handler = _Records()
    logger = logging.getLogger("blockseg")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_lock(folder, **fields) -> None:
    now = time.time()
    content = {"host": socket.gethostname(), "pid": os.getpid(), "started": now - 60, "heartbeat": now,
               "command": "blockseg run", "token": "someone"}
    content.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(content))


def test_a_held_lock_refuses_a_second_holder_in_one_line(tmp_path):
    first = OutputLock(tmp_path / "out")
    first.acquire()
    try:
        with pytest.raises(OutputLocked) as refused:
            OutputLock(tmp_path / "out").acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert f"host {socket.gethostname()}, pid {os.getpid()}, started " in message, message
        assert "in use by another run" in message
        assert status_line(tmp_path / "out").startswith("a run is active on this output")
    finally:
        first.release()
    assert read_lock(tmp_path / "out") is None and status_line(tmp_path / "out") is None
    with OutputLock(tmp_path / "out"):  # free again
        pass


def test_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_warning(tmp_path, records):
    _write_lock(tmp_path, pid=_dead_pid())
    assert "stopped without releasing" in status_line(tmp_path)
    with OutputLock(tmp_path) as taken:
        assert read_lock(tmp_path)["token"] == taken.token
    assert any("took over the lock" in m and "is gone" in m for m in records.messages), records.messages


def test_lock_of_another_node_counts_while_its_heartbeat_is_fresh(tmp_path, records):
    _write_lock(tmp_path, host="node-elsewhere", pid=12345)
    with pytest.raises(OutputLocked, match="host node-elsewhere, pid 12345"):
        OutputLock(tmp_path).acquire()
    _write_lock(tmp_path, host="node-elsewhere", pid=12345, heartbeat=time.time() - lock_module.STALE - 5)
    with OutputLock(tmp_path):
        pass
    assert any("no heartbeat for" in m for m in records.messages), records.messages


def test_the_holder_refreshes_its_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "HEARTBEAT", 0.05)
    with OutputLock(tmp_path):
        first = read_lock(tmp_path)["heartbeat"]
        time.sleep(0.5)
        assert read_lock(tmp_path)["heartbeat"] > first


def test_only_one_of_two_takers_wins_a_stale_lock(tmp_path):
    _write_lock(tmp_path, pid=_dead_pid())
    winners = []
    for _ in range(2):
        candidate = OutputLock(tmp_path)
        try:
            candidate.acquire()
            winners.append(candidate)
        except OutputLocked:
            pass
    assert len(winners) == 1
    winners[0].release()


# -- through the CLI -----------------------------------------------------------


def _config(folder, inputs):
    os.symlink(inputs, folder / "input.zarr")
    return write_demo_config(folder, {
        "block_shape": [320, 640, 640], "cluster.local.workers": 1, "cluster.local.dashboard": False,
        "scheduler.progress": False, "stages.relabel.thresholds": [0.4],
    })


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "blockseg.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def _wait_for_lock(folder, process, seconds=120):
    deadline = time.monotonic() + seconds
    while read_lock(folder) is None:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.05)


def test_two_concurrent_runs_one_runs_the_other_is_refused(tmp_path, small_inputs):
    config = _config(tmp_path, small_inputs)
    first = subprocess.Popen([sys.executable, "-m", "blockseg.cli", "run", str(config)], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(tmp_path / "output", first)
        second = _cli("run", str(config), "--restart", cwd=tmp_path)
        status = _cli("status", str(config), cwd=tmp_path)
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == 2, (second.stdout, second.stderr)
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, second.stderr
    assert f"pid {first.pid}, started " in lines[0] and f"host {socket.gethostname()}" in lines[0], lines[0]
    assert "a run is active on this output" in status.stdout, status.stdout
    assert "Traceback" not in second.stderr
    assert read_lock(tmp_path / "output") is None  # released at the end
    # the refused run touched nothing: the first one's outputs are whole
    again = _cli("run", str(config), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 submitted" in again.stdout and "submitted" in again.stdout


def test_lock_of_a_killed_run_is_taken_over_and_the_run_completes(tmp_path, small_inputs):
    config = _config(tmp_path, small_inputs)
    first = subprocess.Popen([sys.executable, "-m", "blockseg.cli", "run", str(config)], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for_lock(tmp_path / "output", first)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and its workers, as a cancelled job
    first.wait()
    assert read_lock(tmp_path / "output") is not None  # left behind
    second = _cli("run", str(config), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "took over the lock" in second.stderr and "is gone" in second.stderr, second.stderr
    assert read_lock(tmp_path / "output") is None
