"""A throwaway PostgreSQL server for the tests, on 127.0.0.1 and a free port.

It runs from a temporary folder (``initdb`` then ``pg_ctl start``) and needs
password authentication (scram-sha-256) over TCP only, so the tests see
credentials handled as in production. As root, PostgreSQL refuses to run:
the server runs as the ``postgres`` user through ``runuser``. Where the
binaries are missing and this is a Debian-like machine as root (CI), they
are installed with ``apt-get``, as deploy/slurm/single-node.sh installs
SLURM; otherwise :func:`start` returns a reason to skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

USER = "blockseg"
PASSWORD = "s3cret-for-tests"


@dataclass
class Server:
    folder: Path
    port: int
    bin_dir: Path
    run_as: list[str]
    pgpass: Path

    def url(self, database: str, **query: str) -> str:
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}" + (f"?{tail}" if tail else "")

    def psql(self, sql: str, database: str = "postgres") -> str:
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        done = subprocess.run(
            [str(self.bin_dir / "psql") if (self.bin_dir / "psql").exists() else "psql",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", database, "-v", "ON_ERROR_STOP=1",
             "-tAc", sql],
            env=env, capture_output=True, text=True, timeout=60,
        )
        if done.returncode:
            raise RuntimeError(f"psql {sql!r}: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def stop(self) -> None:
        subprocess.run(
            self.run_as + [str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop"],
            capture_output=True, timeout=60,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def _bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _install() -> str | None:
    """Install PostgreSQL with apt-get (root on Debian/Ubuntu); a reason when that cannot be done."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "PostgreSQL is not installed (initdb, pg_ctl) and cannot be installed here (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            return f"installing PostgreSQL timed out ({' '.join(command)})"
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            return f"installing PostgreSQL failed ({' '.join(command)}: {last})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start() -> Server | str:
    """A running server, or the reason there is none."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        problem = _install()
        if problem:
            return problem
        bin_dir = _bin_dir()
        if bin_dir is None:
            return "PostgreSQL was installed but initdb was not found"
    run_as: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="blockseg-pg-"))
    if os.geteuid() == 0:
        # initdb and postgres refuse root
        if shutil.which("runuser") is None:
            return "running as root without runuser: cannot start PostgreSQL as another user"
        try:
            import pwd

            owner = pwd.getpwnam("postgres")
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], capture_output=True)
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no 'postgres' user to run the server"
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    pwfile = folder / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if run_as:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    data = folder / "data"
    done = subprocess.run(
        run_as + [str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"],
        capture_output=True, text=True, timeout=300,
    )
    if done.returncode:
        return f"initdb failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    pwfile.unlink()
    for attempt in range(3):
        port = _free_port()
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='' "
                   f"-c fsync=off -c max_connections=200 -c shared_buffers=64MB")
        done = subprocess.run(
            run_as + [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", options,
                      "-w", "-t", "60", "start"],
            capture_output=True, text=True, timeout=120,
        )
        if done.returncode == 0:
            break
    else:
        log = (folder / "server.log").read_text() if (folder / "server.log").exists() else done.stderr
        return f"PostgreSQL did not start: {(log.strip().splitlines() or ['?'])[-1]}"
    # the tests' credentials: a password file, as a user would keep them
    pgpass = Path(tempfile.mkdtemp(prefix="blockseg-pgpass-")) / "pgpass"
    pgpass.write_text(f"127.0.0.1:{port}:*:{USER}:{PASSWORD}\n")
    pgpass.chmod(0o600)
    server = Server(folder, port, bin_dir, run_as, pgpass)
    deadline = time.monotonic() + 30
    while True:
        try:
            server.psql("SELECT 1")
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                server.stop()
                return "PostgreSQL started but does not answer"
            time.sleep(0.5)
    return server
