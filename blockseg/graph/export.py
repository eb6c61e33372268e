"""Write a piece of the RAG for other tools: GraphML (networkx, Gephi) or npz."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np

from blockseg.geometry import Roi
from blockseg.graph.base import GraphStore, graph_from


def export_graph(store: GraphStore, roi: Roi | None, fmt: str, output: Path) -> tuple[int, int]:
    """Write the nodes whose centre is in ``roi`` and their edges; return the counts.

    ``npz`` holds ``node_ids``, ``node_centers``, ``node_sizes``, ``edge_u``,
    ``edge_v``, ``edge_scores`` and ``node_<attr>`` / ``edge_<attr>`` arrays,
    loadable with ``numpy.load(path)`` (no pickling).
    """
    nodes = store.read_nodes(roi)
    edges = store.read_edges(roi)
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        arrays = {
            "node_ids": nodes.ids, "node_centers": nodes.centers, "node_sizes": nodes.sizes,
            "edge_u": edges.u, "edge_v": edges.v, "edge_scores": edges.scores,
        }
        arrays.update({f"node_{k}": v for k, v in nodes.attrs.items()})
        arrays.update({f"edge_{k}": v for k, v in edges.attrs.items()})
        with open(output, "wb") as handle:
            np.savez(handle, **arrays)
    elif fmt == "graphml":
        graph = graph_from(nodes, edges)
        # GraphML has no tuples: store the centre as three numbers
        for _, data in graph.nodes(data=True):
            if "center" in data:
                data["z"], data["y"], data["x"] = data.pop("center")
        nx.write_graphml(graph, output)
    else:
        raise ValueError(f"unknown format {fmt!r}: use graphml or npz")
    return len(nodes), len(edges)
