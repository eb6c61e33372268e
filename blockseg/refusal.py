"""A refused config leaves the file system as it was.

Most refusals come before anything is written (the YAML, the keys, the
inputs), but some can only be made once the run has begun to set itself up:
the output lock and the log folder exist by then, the graph store may have
been created to read its metadata, and the input check runs on the cluster.
:class:`NewPaths` notes, before the run, which of the paths a run may create
do not exist yet, and removes exactly those when the run is refused before
any block was done, so that no empty output folder or store file is left
behind. Paths that existed before are never touched.

Examples
--------
>>> import tempfile
>>> base = Path(tempfile.mkdtemp())
>>> new = NewPaths([base / "out" / "logs", base / "out" / "graph.db"])
>>> (base / "out" / "logs").mkdir(parents=True)
>>> new.undo()
>>> sorted(p.name for p in base.iterdir())
[]
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from blockseg.config import PipelineConfig

#: Files SQLite keeps beside a database, and the folder of its lookup tables.
SQLITE_SIDECARS = ("-wal", "-shm", "-journal", ".luts")


def _first_missing(path: Path) -> Path | None:
    """The outermost folder (or ``path`` itself) that does not exist yet; None if ``path`` exists."""
    path = path.absolute()
    if path.exists() or path.is_symlink():
        return None
    missing = path
    while not missing.parent.exists() and missing.parent != missing:
        missing = missing.parent
    return missing


class NewPaths:
    """The paths among ``candidates`` (and their missing parents) that do not exist yet.

    Parameters
    ----------
    candidates : iterable of Path
        Everything a command may create. For each, the outermost missing
        folder on its way is what gets removed by :meth:`undo`.
    """

    def __init__(self, candidates: Iterable[Path]) -> None:
        found: list[Path] = []
        for path in candidates:
            missing = _first_missing(Path(path))
            if missing is not None and missing not in found:
                found.append(missing)
        # an outer folder removes what is inside it: keep only the outermost
        self.paths = [p for p in found if not any(o != p and p.is_relative_to(o) for o in found)]

    def undo_unless_running(self, output_dir: Path) -> None:
        """:meth:`undo`, unless a run holds ``output_dir`` by now (its lock): then all of it is that run's."""
        from blockseg.lock import read_lock

        if read_lock(output_dir) is None:
            self.undo()

    def undo(self) -> None:
        """Remove what was created at the noted paths since this object was made."""
        for path in self.paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink(missing_ok=True)


def refusals() -> tuple[type[Exception], ...]:
    """The errors that refuse a config or an input (``blockseg`` exits with 2)."""
    from blockseg.config import ConfigError
    from blockseg.graph import StoreError
    from blockseg.run_state import InputError
    from blockseg.volume import VolumeError

    return ConfigError, InputError, VolumeError, StoreError


def graph_paths(graph_url: str) -> list[Path]:
    """The files and folders the store at ``graph_url`` (absolute) keeps on the local disk; none for a server.

    Examples
    --------
    >>> [p.name for p in graph_paths("sqlite:////data/out/graph.db")][:2]
    ['graph.db', 'graph.db-wal']
    """
    from blockseg.graph import store_path

    scheme = graph_url.partition("://")[0]
    if scheme not in ("sqlite", "file"):
        return []  # a database server: nothing on this disk
    _, path = store_path(graph_url)
    if scheme == "file":
        return [path]
    return [path] + [path.with_name(path.name + suffix) for suffix in SQLITE_SIDECARS]


def run_paths(config: "PipelineConfig") -> list[Path]:
    """Every local path a run of ``config`` may create before its first block is done.

    The output folder, its logs, the graph store (with SQLite's side files)
    and a local volumes container named outside the output folder.

    Raises
    ------
    ConfigError
        If the graph URL cannot be used (the same refusal the run would make).
    """
    from blockseg import storage

    output = config.output_dir
    paths = [output, output / "logs", output / "volumes.zarr"]
    paths += graph_paths(config.graph_url)
    volumes = config.volumes_url
    if not storage.is_remote(volumes):
        paths.append(Path(storage.local_path(volumes)))
    return paths
