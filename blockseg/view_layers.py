"""What ``blockseg view`` shows: one viewer layer per dataset of a run.

:func:`find_layers` lists a run's outputs and inputs as :class:`Layer`
objects, preferring each dataset's OME-Zarr pyramid over the full-resolution
array, and says where the server mounts the inputs that lie outside the
output folder; :func:`browser_url` is the address a browser reads a remote
layer from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from blockseg import storage
from blockseg.volume import VolumeError, open_volume, split_array_url

if TYPE_CHECKING:
    from blockseg.config import PipelineConfig


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
