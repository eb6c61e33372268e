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

The viewer itself comes from the same server: the neuroglancer client
that the ``neuroglancer`` package ships (``pip install "blockseg[view]"``)
is served at ``/v/blockseg/``, so a node with no internet shows a run
(``--public`` links to the public neuroglancer site instead).

Volumes on an object store (``storage.volumes: s3://...``, inputs on
``s3://`` or ``https://``) are not served: the link gives neuroglancer their
own URL (``zarr3://s3://bucket/...``, or the path-style address on a custom
``endpoint_url``, which a browser cannot be told otherwise), and the napari
command opens them by URL with the config's storage options. The browser
then needs access to the bucket itself, which ``view`` says in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from blockseg import storage  # noqa: F401
from blockseg.view_layers import (  # noqa: F401
    Layer,
    _children,
    _container_of,
    _fs_path,
    _layer,
    _mount,
    _node_meta,
    _pyramid_levels,
    _served_path,
    _threshold,
    browser_url,
    find_layers,
)
from blockseg.view_links import (  # noqa: F401
    NEUROGLANCER_URL,
    _axis_names,
    local_viewer_url,
    _open_array_call,
    layer_source_url,
    napari_command,
    neuroglancer_link,
    neuroglancer_state,
    parse_neuroglancer_link,
)
from blockseg.view_server import (  # noqa: F401
    _RANGE,
    CLIENT_PREFIX,
    HOST,
    CorsRequestHandler,
    neuroglancer_client_dir,
    start_server,
)
from blockseg.volume import VolumeError, open_volume, split_array_url  # noqa: F401

if TYPE_CHECKING:
    from blockseg.config import PipelineConfig


def view(
    config: "PipelineConfig", port: int = 0, open_browser: bool = True, viewer_url: str | None = None,
    request_log: "Path | None" = None,
) -> int:
    """Serve the run's local outputs until Ctrl-C; print the neuroglancer link and the napari command.

    Parameters
    ----------
    viewer_url : str, optional
        The neuroglancer to link to. By default the client is served by the
        same server at ``/neuroglancer/`` (no internet needed); without the
        ``neuroglancer`` package, or when every layer is remote (the
        browser needs the network for those anyway), the public site.
    request_log : Path, optional
        A file that gets one line per answer of the server (``METHOD STATUS PATH``).

    Remote layers are not served: the link names their own URL. When every
    layer is remote there is nothing to serve, and the command returns once
    it has printed.
    """
    layers, mounts = find_layers(config)
    local = [layer for layer in layers if not layer.remote]
    remote = [layer for layer in layers if layer.remote]
    client = neuroglancer_client_dir() if viewer_url is None and local else None
    if viewer_url is None and local and client is None:
        print('the neuroglancer client is not installed (pip install "blockseg[view]"): linking to the public site')
    server = thread = None
    base_url = None
    if local:
        served = dict(mounts)
        if client is not None:
            served[CLIENT_PREFIX] = client
        server, thread = start_server(config.output_dir, served, port, request_log=request_log)
        base_url = f"http://{HOST}:{server.server_address[1]}"
    if viewer_url is None:
        viewer_url = local_viewer_url(base_url) if client is not None else NEUROGLANCER_URL
    link = neuroglancer_link(neuroglancer_state(layers, base_url), viewer_url)
    if server is not None:
        print(f"serving {config.output_dir} on {base_url}/ (Ctrl-C stops)")
        for prefix, root in mounts.items():
            print(f"  {base_url}/{prefix}/ -> {root}")
        if client is not None:
            print(f"  {base_url}/{CLIENT_PREFIX}/ -> the neuroglancer client ({client})")
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
        server.closing = True  # ends the client's idle event streams
        server.shutdown()
        server.server_close()
        if server.request_log is not None:
            server.request_log.close()
    print("blockseg view: stopped", flush=True)
    return 0
