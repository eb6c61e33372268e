"""The contract every graph store keeps.

A graph store holds the region adjacency graph of a run (fragments as nodes,
their contacts as edges with merge scores) and the run's ledger: which blocks
of which stage are done, and the identity of each stage's current results.
Everything a block produces reaches the store in one atomic commit together
with its done mark, so a crash leaves a block either wholly there or absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np

from blockseg.geometry import Roi


@dataclass
class Nodes:
    """RAG nodes: fragment ids, centres in nm (n, dims) and sizes in voxels."""

    ids: np.ndarray
    centers: np.ndarray
    sizes: np.ndarray

    @classmethod
    def empty(cls, dims: int = 3) -> "Nodes":
        return cls(np.zeros(0, np.uint64), np.zeros((0, dims), np.float64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Edges:
    """RAG edges ``u < v`` with the score at which they merge."""

    u: np.ndarray
    v: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> "Edges":
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.u)


@dataclass
class BlockOutput:
    """What a block hands to the store: graph rows and an opaque result."""

    nodes: Nodes | None = None
    edges: Edges | None = None
    result: bytes | None = None
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StageState:
    """Identity of a stage's results: what they were computed from, and their token."""

    fingerprint: str
    token: str


class GraphStore(Protocol):
    """What blockseg needs from a graph store."""

    def commit_block(self, stage: str, block_id: int, output: BlockOutput) -> None:
        """Replace the block's rows of ``stage`` and mark it done, atomically."""

    def done_blocks(self, stage: str) -> set[int]:
        """Ids of the blocks of ``stage`` that are done."""

    def drop_stage(self, stage: str) -> None:
        """Forget everything ``stage`` wrote: rows, results, done marks and state."""

    def stage_state(self, stage: str) -> StageState | None: ...

    def set_stage_state(self, stage: str, state: StageState) -> None: ...

    def read_nodes(self, roi: Roi | None = None) -> Nodes:
        """Nodes whose centre lies inside ``roi`` (all nodes if None)."""

    def read_edges(self, roi: Roi | None = None) -> Edges:
        """Edges with at least one node whose centre lies inside ``roi``."""

    def iter_edges(self, chunk_size: int = 1_000_000) -> Iterator[Edges]:
        """All edges, in chunks of numpy arrays."""

    def block_results(self, stage: str) -> dict[int, bytes]: ...

    def close(self) -> None: ...
