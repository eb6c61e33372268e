"""The neuroglancer link and the napari command that show a run's layers.

:func:`neuroglancer_state` describes the layers of
:mod:`blockseg.view_layers` as a neuroglancer state (local layers at the
server's base URL, remote ones at their own), :func:`neuroglancer_link`
packs it into a link (and :func:`parse_neuroglancer_link` back), and
:func:`napari_command` opens the same data in napari.

Examples
--------
>>> parse_neuroglancer_link(neuroglancer_link({"layers": []}))
{'layers': []}
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Sequence

from blockseg.view_layers import Layer


NEUROGLANCER_URL = "https://neuroglancer-demo.appspot.com/"


def local_viewer_url(base_url: str) -> str:
    """Where ``blockseg view``'s server serves the neuroglancer client: ``base_url/v/blockseg/``.

    Examples
    --------
    >>> local_viewer_url("http://127.0.0.1:8000")
    'http://127.0.0.1:8000/v/blockseg/'
    """
    from blockseg.view_server import CLIENT_PREFIX

    return f"{base_url.rstrip('/')}/{CLIENT_PREFIX}/"


def _axis_names(layer: Layer) -> list[str]:
    return ["z", "y", "x"][-len(layer.voxel_size):]


def layer_source_url(layer: Layer, base_url: str | None) -> str:
    """The ``zarr3://`` source of a layer: its own URL if remote, else where ``base_url`` serves it."""
    if layer.remote_url is not None:
        return f"zarr3://{layer.remote_url.rstrip('/')}/"
    if base_url is None:
        raise ValueError(f"layer {layer.name} is local and needs the server's base URL (http://127.0.0.1:PORT)")
    return f"zarr3://{base_url.rstrip('/')}/{layer.url_path}/"


def neuroglancer_state(layers: Sequence[Layer], base_url: str | None) -> dict:
    """A neuroglancer state showing ``layers``, the local ones served at ``base_url`` (``http://127.0.0.1:PORT``).

    Remote layers keep their own URL (:func:`browser_url`): the browser reads
    them from the object store, not through blockseg's server.

    The global dimensions carry the first layer's voxel size in metres
    (neuroglancer's unit). A pyramid brings its scales and translations in
    its OME metadata (neuroglancer reads an OME translation as a voxel's
    centre, as blockseg writes it); a plain array, which has no units of its
    own, gets its voxel size and offset (corner) through the source's transform.
    """
    first = layers[0]
    names = _axis_names(first)
    dimensions = {n: [v * 1e-9, "m"] for n, v in zip(names, first.voxel_size)}
    centre = [(o + s * v / 2) / v for o, s, v in zip(first.offset, first.shape, first.voxel_size)]
    state_layers = []
    for layer in layers:
        url = layer_source_url(layer, base_url)
        if layer.multiscale:
            source: dict | str = url  # the OME metadata carries scales and translations
        else:
            spatial = len(layer.voxel_size)
            # a channel axis becomes a local dimension (primed name), as neuroglancer does for OME channels
            output = {f"c{i}'": [1, ""] for i in range(layer.channels)}
            output.update({n: [v * 1e-9, "m"] for n, v in zip(_axis_names(layer), layer.voxel_size)})
            rank = layer.channels + spatial
            shift = [0.0] * layer.channels + [o / v for o, v in zip(layer.offset, layer.voxel_size)]
            matrix = [[1.0 if j == i else 0.0 for j in range(rank)] + [shift[i]] for i in range(rank)]
            source = {"url": url, "transform": {"outputDimensions": output, "matrix": matrix}}
        entry = {"type": layer.kind, "source": source, "name": layer.name}
        if layer.kind == "segmentation" and layer.name == "ground_truth":
            entry["visible"] = False
        state_layers.append(entry)
    return {
        "dimensions": dimensions,
        "position": centre,
        "crossSectionScale": 1,
        "projectionScale": max(s * v for s, v in zip(first.shape, first.voxel_size)) * 2,
        "layers": state_layers,
        "selectedLayer": {"layer": state_layers[-1]["name"], "visible": True},
        "layout": "4panel",
    }


def neuroglancer_link(state: dict, viewer_url: str = NEUROGLANCER_URL) -> str:
    """The viewer URL with ``state`` in its fragment (``#!`` + URL-encoded JSON)."""
    text = json.dumps(state, separators=(",", ":"))
    return f"{viewer_url.rstrip('/')}/#!{urllib.parse.quote(text, safe='')}"


def parse_neuroglancer_link(link: str) -> dict:
    """The state in a neuroglancer link (the inverse of :func:`neuroglancer_link`)."""
    _, sep, fragment = link.partition("#!")
    if not sep:
        raise ValueError(f"not a neuroglancer link (no '#!'): {link[:80]}")
    return json.loads(urllib.parse.unquote(fragment))


def _open_array_call(layer: Layer, path: str) -> str:
    if layer.remote and layer.storage_options:
        # the config's options (endpoint, profile): never credentials, which the config refuses
        return f"zarr.open_array({path!r}, mode='r', storage_options={layer.storage_options!r})"
    return f"zarr.open_array({path!r}, mode='r')"


def napari_command(layers: Sequence[Layer]) -> str:
    """A shell command that opens the same layers in napari, local files by path, remote ones by URL.

    Scale and translate are per spatial axis; napari puts a pixel's centre at
    ``translate + index * scale``, so translate is the centre of the first voxel.
    Remote layers are opened through fsspec with the config's storage options;
    credentials come from the environment, as for the run.
    """
    lines = ["import napari, zarr", "v = napari.Viewer()"]
    for layer in layers:
        if layer.multiscale:
            levels = [_open_array_call(layer, f"{layer.path.rstrip('/')}/s{k}") for k in range(layer.levels)]
            data = "[" + ", ".join(levels) + "]"
        else:
            data = _open_array_call(layer, layer.path)
        scale = tuple(float(v) for v in layer.voxel_size)
        translate = tuple(o + v / 2 for o, v in zip(layer.offset, layer.voxel_size))
        if layer.kind == "image":
            channel = ", channel_axis=0" if layer.channels else ""
            lines.append(f"v.add_image({data}, name={layer.name!r}, scale={scale}, translate={translate}{channel})")
        else:
            lines.append(f"v.add_labels({data}, name={layer.name!r}, scale={scale}, translate={translate})")
    lines.append("napari.run()")
    script = "; ".join(lines)
    return f'python -c "{script}"'
