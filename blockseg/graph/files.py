"""The file graph store: one ``.npz`` file per block per stage.

Layout under the store's folder::

    meta.json                     what pipeline wrote here
    stages/<stage>.json           fingerprint and token of a stage's results
    blocks/<stage>/<block>.npz    a block's nodes, edges and result; its done mark
    luts/threshold_<t>/           a lookup table: piece_<k>.npy by home block, index.json last

A block file is written under a temporary name in the same folder and renamed
into place, which is atomic on POSIX filesystems (shared ones included): a
crash leaves either the whole block or no block, never part of one. Writers
need no lock and no coordination, since each block has its own file and
rewriting a block replaces its file; so workers may commit their own blocks.
Archives are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import networkx as nx
import numpy as np

from blockseg.geometry import Roi
from blockseg.graph.base import (
    BlockOutput,
    Edges,
    LutFolder,
    Nodes,
    StageState,
    StoreError,
    chunked_edges,
    concatenate_edges,
    concatenate_nodes,
    graph_from,
    nodes_in_roi,
    stale_commit,
)

_TMP = ".tmp-"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    temporary = path.with_name(f"{path.name}{_TMP}{uuid.uuid4().hex}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class FileGraphStore(LutFolder):
    """Graph store in a folder of per-block ``.npz`` files.

    Parameters
    ----------
    root : str or Path
        The folder; created if needed.
    """

    #: Workers commit their own blocks: each block is its own file, renamed into place.
    workers_write = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"
        try:
            (self.root / "blocks").mkdir(parents=True, exist_ok=True)
            (self.root / "stages").mkdir(exist_ok=True)
        except OSError as error:
            raise StoreError(f"graph store {self.root}: cannot create it ({error.strerror})") from None
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"graph store {self.root}: folder is not writable")
        self.lut_dir = self.root / "luts"

    def __repr__(self) -> str:
        return f"FileGraphStore({str(self.root)!r})"

    def _stage_dir(self, stage: str) -> Path:
        if not stage or "/" in stage or stage.startswith("."):
            raise StoreError(f"invalid stage name {stage!r}")
        return self.root / "blocks" / stage

    def _block_files(self, stage: str | None = None) -> list[tuple[str, int, Path]]:
        stages = [stage] if stage else sorted(p.name for p in (self.root / "blocks").iterdir() if p.is_dir())
        found = []
        for name in stages:
            folder = self._stage_dir(name)
            if not folder.exists():
                continue
            for path in folder.iterdir():
                if path.suffix == ".npz" and _TMP not in path.name and path.stem.isdigit():
                    found.append((name, int(path.stem), path))
        return sorted(found, key=lambda item: (item[0], item[1]))

    # -- writing -----------------------------------------------------------
    def commit_block(self, stage: str, block_id: int, output: BlockOutput, token: str | None = None) -> None:
        output.check()
        folder = self._stage_dir(stage)
        if token is not None:
            # checked before the write, not with it: files have no transaction,
            # so a reset in the milliseconds between the two is not caught
            current = self.stage_state(stage)
            if current is None or current.token != token:
                raise stale_commit(stage, int(block_id), token, None if current is None else current.token)
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        if output.nodes is not None:
            n = output.nodes
            arrays.update(node_ids=n.ids.astype(np.uint64), node_centers=n.centers.astype(np.float64),
                          node_sizes=n.sizes.astype(np.int64))
            arrays.update({f"node_attr_{k}": v for k, v in n.attrs.items()})
        if output.edges is not None:
            e = output.edges
            arrays.update(edge_u=e.u.astype(np.uint64), edge_v=e.v.astype(np.uint64),
                          edge_scores=e.scores.astype(np.float32))
            arrays.update({f"edge_attr_{k}": v for k, v in e.attrs.items()})
        if output.result is not None:
            arrays["result"] = np.frombuffer(output.result, dtype=np.uint8)
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        _atomic_write_bytes(folder / f"{int(block_id)}.npz", buffer.getvalue())

    def drop_stage(self, stage: str) -> None:
        folder = self._stage_dir(stage)
        state = self.root / "stages" / f"{stage}.json"
        # forget the state first: a crash halfway leaves a stage that reruns
        if state.exists():
            state.unlink()
        if folder.exists():
            trash = folder.with_name(f".trash-{stage}-{uuid.uuid4().hex}")
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def set_stage_state(self, stage: str, state: StageState) -> None:
        self._stage_dir(stage)  # validates the name
        text = json.dumps({"fingerprint": state.fingerprint, "token": state.token})
        _atomic_write_bytes(self.root / "stages" / f"{stage}.json", text.encode())

    def write_meta(self, meta: dict) -> None:
        _atomic_write_bytes(self.root / "meta.json", json.dumps(meta, sort_keys=True).encode())

    # -- reading -----------------------------------------------------------
    def read_meta(self) -> dict | None:
        path = self.root / "meta.json"
        return json.loads(path.read_text()) if path.exists() else None

    def done_blocks(self, stage: str) -> set[int]:
        # plain names, no Path objects: a stage may have a million blocks
        folder = self._stage_dir(stage)
        if not folder.exists():
            return set()
        done = set()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.endswith(".npz") and name[:-4].isdigit():
                    done.add(int(name[:-4]))
        return done

    def stage_state(self, stage: str) -> StageState | None:
        path = self.root / "stages" / f"{stage}.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return StageState(data["fingerprint"], data["token"])

    def block_results(self, stage: str) -> dict[int, bytes]:
        results = {}
        for _, block, path in self._block_files(stage):
            with np.load(path, allow_pickle=False) as archive:
                if "result" in archive.files:
                    results[block] = archive["result"].tobytes()
        return results

    def read_block_results(self, stage: str, block_ids: Sequence[int]) -> dict[int, bytes]:
        folder = self._stage_dir(stage)
        found = {}
        for block_id in sorted({int(b) for b in block_ids}):
            try:
                with np.load(folder / f"{block_id}.npz", allow_pickle=False) as archive:
                    if "result" in archive.files:
                        found[block_id] = archive["result"].tobytes()
            except FileNotFoundError:
                continue
        return found

    def _load_nodes(self, path: Path) -> Nodes | None:
        with np.load(path, allow_pickle=False) as archive:
            if "node_ids" not in archive.files:
                return None
            attrs = {k[len("node_attr_"):]: archive[k] for k in archive.files if k.startswith("node_attr_")}
            return Nodes(archive["node_ids"], archive["node_centers"], archive["node_sizes"], attrs)

    def _load_edges(self, path: Path) -> Edges | None:
        with np.load(path, allow_pickle=False) as archive:
            if "edge_u" not in archive.files:
                return None
            attrs = {k[len("edge_attr_"):]: archive[k] for k in archive.files if k.startswith("edge_attr_")}
            return Edges(archive["edge_u"], archive["edge_v"], archive["edge_scores"], attrs)

    def read_nodes(self, roi: Roi | None = None) -> Nodes:
        parts = []
        for _, _, path in self._block_files():
            nodes = self._load_nodes(path)
            if nodes is not None and len(nodes):
                parts.append(nodes.take(nodes_in_roi(nodes, roi)))
        nodes = concatenate_nodes(parts)
        return nodes.take(np.argsort(nodes.ids, kind="stable"))

    def read_edges(self, roi: Roi | None = None) -> Edges:
        edges = concatenate_edges(list(self.iter_edges()))
        if roi is not None and len(edges):
            inside = self.read_nodes(roi).ids
            edges = edges.take(np.isin(edges.u, inside) | np.isin(edges.v, inside))
        return edges.take(np.lexsort((edges.v, edges.u)))

    def iter_edges(self, chunk_size: int = 1_000_000) -> Iterator[Edges]:
        return chunked_edges((self._load_edges(path) for _, _, path in self._block_files()), chunk_size)

    def edge_block_ids(self, stage: str) -> list[int]:
        """Ids of the blocks of ``stage`` that are done (sorted); those without edges read as empty."""
        return sorted(self.done_blocks(stage))

    def read_block_node_ids(self, stage: str, block_ids: Sequence[int]) -> np.ndarray:
        """Ids (uint64) of the nodes that blocks ``block_ids`` of ``stage`` wrote, in no particular order."""
        folder = self._stage_dir(stage)
        parts = []
        for block_id in block_ids:
            try:
                with np.load(folder / f"{int(block_id)}.npz", allow_pickle=False) as archive:
                    if "node_ids" in archive.files:
                        parts.append(archive["node_ids"].astype(np.uint64))
            except FileNotFoundError:
                continue
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    def read_block_edges(self, stage: str, block_ids: Sequence[int]) -> Edges:
        """The edges that blocks ``block_ids`` of ``stage`` wrote, block by block in the order given."""
        folder = self._stage_dir(stage)
        parts = []
        for block_id in block_ids:
            path = folder / f"{int(block_id)}.npz"
            try:
                edges = self._load_edges(path)
            except FileNotFoundError:
                continue
            if edges is not None:
                parts.append(edges)
        return concatenate_edges(parts)

    def read_graph(self, roi: Roi | None = None) -> nx.Graph:
        return graph_from(self.read_nodes(roi), self.read_edges(roi))

    def close(self) -> None:
        """Nothing to release: every call opens and closes its files."""
