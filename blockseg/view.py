"""``blockseg view``: serve a run's outputs on 127.0.0.1 and say how to look at them.

The server is the standard library's threaded HTTP server with what a
browser-based viewer needs on top: CORS headers on every answer (the viewer
page lives on another origin), ``OPTIONS`` pre-flight answers, and single
``Range`` requests (partial reads of shards). It serves the run's output
folder at ``/``; input containers that lie outside it (raw, input
affinities, ground truth) are mounted read-only at ``/inputs/<name>.zarr``.

Each layer prefers the dataset's OME-Zarr pyramid
(``volumes.zarr/pyramids/<name>``, written by the ``downsample`` stage) and
falls back to the full-resolution array. Neuroglancer reads the local
layers as ``zarr3://http://127.0.0.1:PORT/...`` sources; napari opens the
same data from the local files.

Volumes on an object store (``storage.volumes: s3://...``, inputs on
``s3://`` or ``https://``) are not served: the link gives neuroglancer their
own URL (``zarr3://s3://bucket/...``, or the path-style address on a custom
``endpoint_url``, which a browser cannot be told otherwise), and the napari
command opens them by URL with the config's storage options. The browser
then needs access to the bucket itself, which ``view`` says in one line.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from blockseg import storage
from blockseg.volume import VolumeError, open_volume, split_array_url

if TYPE_CHECKING:
    from blockseg.config import PipelineConfig

HOST = "127.0.0.1"
NEUROGLANCER_URL = "https://neuroglancer-demo.appspot.com/"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class Layer:
    """One dataset as a viewer layer."""

    name: str
    kind: str  # "image" or "segmentation", neuroglancer's layer types
    path: str  # local folder or object-store URL: an OME-Zarr pyramid group or a plain zarr array
    url_path: str | None  # where the server has it, without leading slash; None for a remote layer
    voxel_size: tuple[int, ...]  # level 0, nm
    offset: tuple[int, ...]  # corner of the first voxel, nm
    shape: tuple[int, ...]  # level 0 spatial shape, voxels
    channels: int  # leading channel axes
    levels: int  # 1 for a plain array
    multiscale: bool  # an OME-Zarr pyramid group (levels s0, s1, ...) rather than a plain array
    remote_url: str | None = None  # what a browser fetches a remote layer from (s3://... or http(s)://...)
    storage_options: dict = field(default_factory=dict)  # fsspec options to open ``path`` (no credentials)

    @property
    def remote(self) -> bool:
        return self.remote_url is not None


# -- what to show ---------------------------------------------------------------


def _container_of(url: str) -> str:
    """The container part of ``container/dataset``, or ``url`` itself when it has none."""
    try:
        return split_array_url(url)[0]
    except VolumeError:
        return url


def _fs_path(url: str):
    """An fsspec filesystem and the path on it; http(s) filesystems take the whole URL."""
    fs, path = storage.filesystem(url)
    if storage.split_protocol(url)[0] in ("http", "https"):
        path = url
    return fs, path


def _node_meta(url: str) -> dict | None:
    """The ``zarr.json`` of the node at ``url`` (local path or URL), None where there is none.

    Raises
    ------
    VolumeError
        If a remote store cannot be reached or read (one line naming the URL).
    """
    if not storage.is_remote(url):
        meta = storage.local_path(url) / "zarr.json"
        return json.loads(meta.read_text()) if meta.is_file() else None
    fs, path = _fs_path(url)
    try:
        return json.loads(fs.cat_file(f"{path.rstrip('/')}/zarr.json"))
    except FileNotFoundError:
        return None
    except Exception as error:  # botocore / aiohttp raise many kinds; all mean the same to the user
        raise VolumeError(storage.explain(url, error)) from None


def _children(url: str) -> list[str]:
    """Names of the nodes directly under the group at ``url`` ([] where there is none)."""
    if not storage.is_remote(url):
        folder = storage.local_path(url)
        return [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if storage.split_protocol(url)[0] in ("http", "https"):
        return []  # plain HTTP has no listings
    fs, path = _fs_path(url)
    try:
        return [name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(path, detail=False, refresh=True)]
    except FileNotFoundError:
        return []
    except Exception as error:
        raise VolumeError(storage.explain(url, error)) from None


def _pyramid_levels(group: str) -> int:
    """Number of levels of an OME-Zarr pyramid group written by blockseg, 0 if there is none."""
    meta = _node_meta(group)
    if meta is None:
        return 0
    multiscales = meta.get("attributes", {}).get("ome", {}).get("multiscales") or []
    if not multiscales:
        return 0
    return len(multiscales[0].get("datasets", []))


def browser_url(url: str) -> str:
    """Where a browser-based viewer reads a remote dataset from.

    ``s3://`` URLs stay as they are (neuroglancer reads them from AWS)
    unless the storage options name an ``endpoint_url``: a browser knows no
    such option, so the dataset's path-style address on that endpoint is
    given instead. ``http(s)://`` URLs stay as they are.

    Examples
    --------
    >>> browser_url("https://example.org/data/run.zarr/raw")
    'https://example.org/data/run.zarr/raw'
    """
    protocol, path = storage.split_protocol(url)
    if protocol in ("s3", "s3a"):
        options = storage.storage_options(url)
        endpoint = options.get("endpoint_url") or options.get("client_kwargs", {}).get("endpoint_url")
        if endpoint:
            return f"{str(endpoint).rstrip('/')}/{path}"
        return f"s3://{path}"
    return url


def _layer(
    name: str, kind: str, url: str, pyramid: str, mounts: dict[str, Path], output_dir: Path, options: dict
) -> Layer | None:
    """A layer for dataset ``url`` (level 0), shown through its pyramid when there is one."""
    try:
        volume = open_volume(url)
    except VolumeError:
        return None
    levels = _pyramid_levels(pyramid)
    path = pyramid if levels else url
    geometry = (volume.voxel_size, volume.offset, volume.spatial_shape, len(volume.channel_shape), max(levels, 1), bool(levels))
    if storage.is_remote(path):
        protocol = storage.split_protocol(path)[0]
        # only object stores take the config's options; a plain https URL needs none
        own = dict(options) if protocol not in ("http", "https") else {}
        return Layer(name, kind, path, None, *geometry, remote_url=browser_url(path), storage_options=own)
    return Layer(name, kind, str(Path(path)), _served_path(Path(path), mounts, output_dir), *geometry)


def _served_path(path: Path, mounts: dict[str, Path], output_dir: Path) -> str:
    path = path.resolve()
    try:
        return path.relative_to(output_dir.resolve()).as_posix()
    except ValueError:
        pass
    for prefix, root in mounts.items():
        try:
            return f"{prefix}/{path.relative_to(root.resolve()).as_posix()}"
        except ValueError:
            continue
    raise AssertionError(f"{path} is neither in the output folder nor mounted")


def _mount(url: str, mounts: dict[str, Path], output_dir: Path) -> None:
    """Mount the container of an input outside the output folder at ``inputs/<name>``."""
    container = Path(split_array_url(url)[0]).resolve()
    if container.is_relative_to(output_dir.resolve()) or container in mounts.values():
        return
    name = container.name
    prefix = f"inputs/{name}"
    index = 1
    while prefix in mounts:  # two inputs in containers of the same name
        index += 1
        prefix = f"inputs/{index}/{name}"
    mounts[prefix] = container


def find_layers(config: "PipelineConfig") -> tuple[list[Layer], dict[str, Path]]:
    """The layers of a run, and the local input containers to mount beside its output folder.

    Order: raw and affinities (images), fragments, each segmentation, ground
    truth (segmentations). Datasets that do not exist yet are left out.
    Volumes on an object store (``storage.volumes`` or inputs on ``s3://``,
    ``https://``) become remote layers, which viewers read from their own URL.

    Raises
    ------
    VolumeError
        If the run has no output to show, or a remote store cannot be read.
    ConfigError
        If the storage options cannot be used.
    """
    from blockseg.layout import prepare_storage

    prepare_storage(config)  # the options of s3:// volumes, and a clear error for a missing bucket
    output_dir = config.output_dir
    volumes = config.volumes_url.rstrip("/")
    pyramids = f"{volumes}/pyramids"
    options = dict(config.storage.options)
    candidates: list[tuple[str, str, str, str]] = []
    if config.input.raw:
        candidates.append(("raw", "image", config.resolve(config.input.raw), f"{pyramids}/raw"))
    affinities = config.resolve(config.input.affinities) if config.input.affinities else f"{volumes}/affinities"
    candidates.append(("affinities", "image", affinities, f"{pyramids}/affinities"))
    # the pieces: fragments, or what mws / channel_instances wrote in their place
    for name in ("fragments", "mws", "instances"):
        candidates.append((name, "segmentation", f"{volumes}/{name}", f"{pyramids}/{name}"))
    thresholds = sorted(
        (name for name in _children(f"{volumes}/segmentation") if name.startswith("threshold_")), key=_threshold
    )
    for folder in thresholds:
        label = f"segmentation_{folder.removeprefix('threshold_')}"
        candidates.append((label, "segmentation", f"{volumes}/segmentation/{folder}", f"{pyramids}/segmentation/{folder}"))
    if config.input.ground_truth:
        candidates.append(("ground_truth", "segmentation", config.resolve(config.input.ground_truth), f"{pyramids}/ground_truth"))
    mounts: dict[str, Path] = {}
    layers = []
    for name, kind, url, pyramid in candidates:
        if url.startswith("precomputed://") or _container_of(url).endswith(".n5"):
            continue  # inputs read through tensorstore: not zarr, nothing a zarr3:// source can show
        if _node_meta(url) is None:
            continue
        if not storage.is_remote(url):
            _mount(url, mounts, output_dir)
        layer = _layer(name, kind, url, pyramid, mounts, output_dir, options)
        if layer is not None:
            layers.append(layer)
    if not any(layer.kind == "segmentation" and not layer.name == "ground_truth" for layer in layers):
        raise VolumeError(
            f"{volumes}: no fragments or segmentation to show yet; run the pipeline first (blockseg run CONFIG)"
        )
    return layers, mounts


def _threshold(name: str) -> float:
    try:
        return float(name.removeprefix("threshold_"))
    except ValueError:
        return float("inf")


# -- neuroglancer and napari ---------------------------------------------------------


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


# -- the server -------------------------------------------------------------------------


class CorsRequestHandler(SimpleHTTPRequestHandler):
    """Files of ``directory`` plus ``mounts``, with CORS headers and byte ranges."""

    mounts: dict[str, Path] = {}

    def __init__(self, *args, mounts: dict[str, Path] | None = None, **kwargs) -> None:
        self.mounts = dict(mounts or {})
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0].split("#", 1)[0]
        clean = posixpath.normpath(urllib.parse.unquote(path))
        words = [w for w in clean.split("/") if w and w not in (os.curdir, os.pardir)]
        root = Path(self.directory)
        # the longest mount prefix that matches wins
        for prefix in sorted(self.mounts, key=len, reverse=True):
            parts = prefix.split("/")
            if words[: len(parts)] == parts:
                root, words = self.mounts[prefix], words[len(parts):]
                break
        return str(root.joinpath(*words)) if words else str(root)

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Expose-Headers", "Content-Length, Content-Range, Accept-Ranges")
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def do_OPTIONS(self) -> None:
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        requested = self.headers.get("Access-Control-Request-Headers")
        self.send_header("Access-Control-Allow-Headers", requested or "Range")
        self.send_header("Access-Control-Max-Age", "86400")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        wanted = self.headers.get("Range")
        path = self.translate_path(self.path)
        if wanted is None or not os.path.isfile(path):
            super().do_GET()
            return
        self._send_range(path, wanted.strip())

    def _send_range(self, path: str, wanted: str) -> None:
        size = os.path.getsize(path)
        match = _RANGE.match(wanted)
        if not match or match.group(1) == match.group(2) == "":
            # several ranges or another unit: answer with the whole file, as RFC 9110 allows
            super().do_GET()
            return
        first, last = match.groups()
        if first == "":  # the last N bytes
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        if start >= size or start > end:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with open(path, "rb") as handle:
            handle.seek(start)
            body = handle.read(end - start + 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def guess_type(self, path) -> str:
        # zarr chunks have no extension; say what they are rather than guess
        if str(path).endswith(".json"):
            return "application/json"
        return "application/octet-stream"

    def list_directory(self, path):
        # viewers never need listings; do not advertise the folder tree
        self.send_error(HTTPStatus.NOT_FOUND, "no listings")
        return None

    def log_message(self, format: str, *args) -> None:
        pass  # a viewer fetches thousands of chunks: keep the terminal for the links


def start_server(directory: Path, mounts: dict[str, Path] | None = None, port: int = 0) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve ``directory`` (and ``mounts``) on 127.0.0.1:``port`` (0: any free port) in a thread.

    Examples
    --------
    >>> import tempfile, urllib.request
    >>> folder = Path(tempfile.mkdtemp()); _ = (folder / "zarr.json").write_text("{}")
    >>> server, thread = start_server(folder)
    >>> port = server.server_address[1]
    >>> with urllib.request.urlopen(f"http://127.0.0.1:{port}/zarr.json") as answer:
    ...     answer.headers["Access-Control-Allow-Origin"], answer.read()
    ('*', b'{}')
    >>> server.shutdown(); server.server_close()
    """
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port} is outside 0..65535 (0 picks a free one)")

    def handler(*args, **kwargs):
        return CorsRequestHandler(*args, directory=str(directory), mounts=mounts, **kwargs)

    try:
        server = ThreadingHTTPServer((HOST, int(port)), handler)
    except OSError as error:
        from blockseg.config import ConfigError

        raise ConfigError(f"--port: cannot serve on {HOST}:{port} ({error.strerror})") from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="blockseg-view", daemon=True)
    thread.start()
    return server, thread


def view(config: "PipelineConfig", port: int = 0, open_browser: bool = True, viewer_url: str = NEUROGLANCER_URL) -> int:
    """Serve the run's local outputs until Ctrl-C; print the neuroglancer link and the napari command.

    Remote layers are not served: the link names their own URL. When every
    layer is remote there is nothing to serve, and the command returns once
    it has printed.
    """
    layers, mounts = find_layers(config)
    local = [layer for layer in layers if not layer.remote]
    remote = [layer for layer in layers if layer.remote]
    server = thread = None
    base_url = None
    if local:
        server, thread = start_server(config.output_dir, mounts, port)
        base_url = f"http://{HOST}:{server.server_address[1]}"
    link = neuroglancer_link(neuroglancer_state(layers, base_url), viewer_url)
    if server is not None:
        print(f"serving {config.output_dir} on {base_url}/ (Ctrl-C stops)")
        for prefix, root in mounts.items():
            print(f"  {base_url}/{prefix}/ -> {root}")
    if remote:
        print(
            f"remote layers {', '.join(layer.name for layer in remote)}: not served; the browser (and napari) read "
            f"them from their own URL, so they need access to it (credentials or a public bucket, and CORS for the browser)"
        )
    for layer in layers:
        scales = f"{layer.levels} levels" if layer.multiscale else "1 level"
        print(f"  layer {layer.name} ({layer.kind}, {scales}): {layer_source_url(layer, base_url)}")
    print(f"neuroglancer: {link}")
    print(f"napari: {napari_command(layers)}", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(link)
    if server is None:
        print("blockseg view: every layer is remote; nothing to serve", flush=True)
        return 0
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    print("blockseg view: stopped", flush=True)
    return 0
