"""Issue 17: what ``blockseg run`` shows: each stage line once, a bar only on a terminal, --quiet, --verbose.

The terminal case runs the command on a pseudo-terminal (stdout and stderr
both a tty, as in an interactive shell); the other cases capture both
streams through pipes, as a batch job's log does.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from blockseg.registry import STAGE_ORDER
from helpers import write_config

STAGES = ("check", "fragments", "agglomerate", "segments", "relabel", "evaluate")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _stage_lines(text: str, stage: str) -> list[str]:
    """The summary lines of ``stage`` in ``text`` (bars redraw with carriage returns: each piece is a line)."""
    pattern = re.compile(rf"^blockseg: {stage}: \d+ block\(s\) done, \d+ already done")
    return [line for line in re.split(r"[\r\n]+", ANSI.sub("", text)) if pattern.match(line.strip())]


@pytest.fixture(scope="module")
def config(tmp_path_factory, small_inputs) -> Path:
    folder = tmp_path_factory.mktemp("terminal")
    # progress on (the default): whether a bar shows is up to the terminal
    return write_config(
        folder, small_inputs, cluster={"local": {"workers": 1, "dashboard": False}}, scheduler={"progress": True}
    )


def _run_on_terminal(*args: str, cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """Run blockseg with stdin, stdout and stderr on one pseudo-terminal; everything it showed, as text."""
    leader, follower = pty.openpty()
    # a terminal of 24 x 100 characters (a fresh pseudo-terminal has none, and a bar 0 wide draws nothing)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "blockseg.cli", *args], stdin=follower, stdout=follower, stderr=follower, cwd=cwd,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )
    os.close(follower)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the command closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            elif process.poll() is not None:
                break
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
    return code, shown.decode("utf-8", "replace")


def _run_piped(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "blockseg.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_terminal_shows_each_stage_line_once_and_a_bar(config):
    code, shown = _run_on_terminal("run", str(config), "--restart", cwd=config.parent)
    assert code == 0, shown
    for stage in STAGES:
        assert len(_stage_lines(shown, stage)) == 1, (stage, shown)
    assert "%|" in shown, "no progress bar was drawn on the terminal"
    # the bar is cleared when its stage ends: no finished bar is left standing on a line of its own
    finished_bars = [line for line in ANSI.sub("", shown).split("\n") if re.search(r"100%\|[^\r]*$", line)]
    assert not finished_bars, finished_bars


def test_pipes_get_plain_lines_each_once(config):
    result = _run_piped("run", str(config), "--restart", cwd=config.parent)
    assert result.returncode == 0, result.stderr
    both = result.stdout + result.stderr
    for stage in STAGES:
        assert len(_stage_lines(result.stdout, stage)) == 1, (stage, result.stdout)
        assert not _stage_lines(result.stderr, stage), (stage, result.stderr)
    assert "\r" not in both and "%|" not in both, "a progress bar went to a pipe"
    assert result.stderr.strip() == "", result.stderr


def test_quiet_shows_only_where_the_results_are(config):
    result = _run_piped("run", str(config), "--restart", "--quiet", cwd=config.parent)
    assert result.returncode == 0, result.stderr
    for stage in STAGE_ORDER:
        assert not _stage_lines(result.stdout, stage), result.stdout
    assert "voi_split" not in result.stdout  # no score table
    lines = result.stdout.splitlines()
    assert any(line.startswith("outputs: ") for line in lines) and any(line.startswith("scores: ") for line in lines)
    assert len(lines) <= 3, lines


def test_verbose_adds_debug_lines_and_still_each_stage_once(config):
    normal = _run_piped("run", str(config), "--restart", cwd=config.parent)
    verbose = _run_piped("run", str(config), "--restart", "--verbose", cwd=config.parent)
    assert normal.returncode == verbose.returncode == 0, verbose.stderr
    for stage in STAGES:
        assert len(_stage_lines(verbose.stdout, stage)) == 1, (stage, verbose.stdout)
    assert len(verbose.stdout.splitlines()) > len(normal.stdout.splitlines()), verbose.stdout
    assert "log file " in verbose.stdout and "log file " not in normal.stdout
    refused = _run_piped("run", str(config), "--quiet", "--verbose", cwd=config.parent)
    assert refused.returncode == 2 and "not allowed with argument" in refused.stderr
