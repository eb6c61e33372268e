"""Zarr v3 arrays that know where they are in the world.

A :class:`Volume` wraps one zarr array whose last ``len(voxel_size)`` axes are
spatial (z, y, x) and whose leading axes, if any, are channels. Its
attributes carry ``voxel_size``, ``offset`` (nm) and ``axis_names``, plus an
OME-Zarr style ``multiscales`` entry describing the array as a single scale
level, so other tools find the same geometry.

Arrays are addressed as ``path/to/container.zarr/dataset/path``: the part up
to and including the first component that ends in ``.zarr`` (or ``.n5``) is
the container. The container may be a local path, a ``file://`` URL or an
object-store URL such as ``s3://bucket/run/volumes.zarr`` (see
:mod:`blockseg.storage`). Besides blockseg's own arrays, :func:`open_volume`
reads zarr v2 arrays (daisy / funlib ``resolution`` and ``offset``
attributes), OME-Zarr multiscale groups, and through tensorstore N5 datasets
and ``precomputed://`` volumes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from blockseg import storage
from blockseg.formats import FormatError, TensorstoreArray, ome_geometry, ome_multiscales, open_n5, open_precomputed
from blockseg.geometry import Coordinate, Roi, coordinate
from blockseg.stage_errors import naming

TOKEN_ATTR = "blockseg_token"


class VolumeError(ValueError):
    """A dataset is missing or does not have the expected form."""


def split_array_url(url: str | Path) -> tuple[str, str]:
    """Split ``container.zarr/dataset`` into the container and the dataset path.

    Examples
    --------
    >>> split_array_url("/data/run.zarr/volumes/affs")
    ('/data/run.zarr', 'volumes/affs')
    """
    text = str(url).rstrip("/")
    parts = text.split("/")
    for i, part in enumerate(parts):
        if part.endswith((".zarr", ".n5")):
            container = "/".join(parts[: i + 1]) or "/"
            dataset = "/".join(parts[i + 1 :])
            if not dataset:
                raise VolumeError(f"{url}: names a container, not a dataset inside it")
            return container, dataset
    raise VolumeError(f"{url}: expected 'container.zarr/dataset' (no '.zarr' or '.n5' component found)")


def _ome_multiscales(axis_names: Sequence[str], voxel_size: Coordinate, offset: Coordinate, channels: int) -> list[dict]:
    axes = [{"name": name, "type": "channel"} for name in axis_names[:channels]]
    axes += [{"name": name, "type": "space", "unit": "nanometer"} for name in axis_names[channels:]]
    scale = [1.0] * channels + [float(v) for v in voxel_size]
    translation = [0.0] * channels + [float(o) for o in offset]
    return [
        {
            "version": "0.5",
            "axes": axes,
            "datasets": [
                {
                    "path": ".",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": scale},
                        {"type": "translation", "translation": translation},
                    ],
                }
            ],
        }
    ]


@dataclass
class Volume:
    """A zarr array with a voxel size and an offset in world units."""

    array: zarr.Array
    url: str
    voxel_size: Coordinate
    offset: Coordinate
    axis_names: tuple[str, ...]

    @property
    def spatial_dims(self) -> int:
        return len(self.voxel_size)

    @property
    def channel_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[: self.array.ndim - self.spatial_dims])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[self.array.ndim - self.spatial_dims :])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def roi(self) -> Roi:
        """The world ROI covered by the data."""
        return Roi(self.offset, tuple(s * v for s, v in zip(self.spatial_shape, self.voxel_size)))

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """Spatial shape of the unit of concurrent writes (the shard if sharded), in voxels."""
        shards = getattr(self.array, "shards", None)
        grid = shards if shards is not None else self.array.chunks
        return tuple(grid[self.array.ndim - self.spatial_dims :])

    @property
    def token(self) -> str | None:
        """The identity blockseg gave this dataset when it created it."""
        return self.array.attrs.get(TOKEN_ATTR)

    def is_write_aligned(self, roi: Roi) -> bool:
        """Whether ``roi`` covers whole chunks (shards) of this array.

        An end that coincides with the end of the data counts as aligned:
        the last chunk along an axis may be partial.
        """
        if not roi.is_aligned(self.voxel_size):
            return False
        data = self.roi
        for o, e, d_o, d_e, v, c in zip(roi.offset, roi.end, data.offset, data.end, self.voxel_size, self.chunk_shape):
            step = v * c
            if (o - d_o) % step != 0:
                return False
            if (e - d_o) % step != 0 and e != d_e:
                return False
        return True

    def read(self, roi: Roi, pad_value: float = 0, cached: bool = False) -> np.ndarray:
        """Read ``roi`` (snapped outwards to voxels); voxels outside the data are ``pad_value``.

        With ``cached``, decoded chunks come from and go to this worker's
        :mod:`blockseg.chunk_cache` while a stage has configured one; only
        for arrays that stage does not write.
        """
        roi = roi.snap(self.voxel_size, "grow")
        _, shape = roi.to_voxels(self.voxel_size)
        inside = roi.intersect(self.roi)
        channels = tuple(slice(None) for _ in self.channel_shape)
        if inside == roi:
            # wholly inside the data: zarr's own new array, no padded copy
            return self._read_inside(channels + roi.slices(self.voxel_size, self.offset), cached)
        out = np.full(self.channel_shape + shape, pad_value, dtype=self.dtype)
        if inside.empty:
            return out
        source = inside.slices(self.voxel_size, self.offset)
        target = inside.slices(self.voxel_size, roi.offset)
        out[channels + target] = self._read_inside(channels + source, cached)
        return out

    def _read_inside(self, selection: tuple[slice, ...], cached: bool) -> np.ndarray:
        if cached and isinstance(self.array, zarr.Array):
            from blockseg import chunk_cache

            full = tuple(
                slice(0 if s.start is None else s.start, n if s.stop is None else s.stop)
                for s, n in zip(selection, self.array.shape)
            )
            data = chunk_cache.read(self.array, self.url, full)
            if data is not None:
                return data
        return np.asarray(self.array[selection])

    def write(self, roi: Roi, data: np.ndarray) -> None:
        """Write ``data`` to ``roi``, which must lie inside the data and be voxel aligned."""
        if not self.roi.contains(roi):
            raise VolumeError(f"{self.url}: write ROI {roi} outside the data {self.roi}")
        channels = tuple(slice(None) for _ in self.channel_shape)
        with naming(self.url):  # a full disk fails zarr's write, which names no file: say which volume
            self.array[channels + roi.slices(self.voxel_size, self.offset)] = data


def _read_geometry(array: zarr.Array, url: str) -> tuple[Coordinate, Coordinate, tuple[str, ...]]:
    attrs = dict(array.attrs)
    if "voxel_size" in attrs:
        voxel_size = coordinate(attrs["voxel_size"])
    elif "resolution" in attrs:  # the funlib / daisy spelling
        voxel_size = coordinate(attrs["resolution"])
    else:
        raise VolumeError(f"{url}: no 'voxel_size' attribute; blockseg needs it to place the data in nm")
    spatial = len(voxel_size)
    if spatial > array.ndim:
        raise VolumeError(f"{url}: voxel_size has {spatial} axes but the array only {array.ndim}")
    offset = coordinate(attrs.get("offset", [0] * spatial))
    if len(offset) != spatial:
        raise VolumeError(f"{url}: offset {offset} and voxel_size {voxel_size} differ in length")
    names = attrs.get("axis_names") or ([f"c{i}" for i in range(array.ndim - spatial)] + ["z", "y", "x"][-spatial:])
    return voxel_size, offset, tuple(names)


def _open_node(container: str, dataset: str, mode: str, url: str):
    """The zarr array or group at ``dataset`` (zarr v3 or v2, found by zarr)."""
    if storage.is_remote(container):
        store = storage.zarr_store(container, read_only=mode == "r")
    else:
        path = storage.local_path(container)
        if not path.exists():
            raise VolumeError(f"{url}: container {container} does not exist")
        store = storage.zarr_store(path, read_only=mode == "r")
    try:
        return zarr.open(store, path=dataset, mode=mode)
    except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError, zarr.errors.NodeTypeValidationError) as error:
        if storage.is_remote(container):
            if not isinstance(error, (KeyError, zarr.errors.NodeNotFoundError)):
                raise VolumeError(storage.explain(url, error)) from None
            # say "no such bucket" or "endpoint unreachable" rather than "no array" where that is the cause
            try:
                storage.check_container(container)
            except storage.StorageError as problem:
                raise VolumeError(f"{url}: {problem}") from None
        raise VolumeError(f"{url}: no array '{dataset}' in {container}") from error
    except Exception as error:  # an object store's connection / permission errors
        if storage.is_remote(container):
            raise VolumeError(storage.explain(url, error)) from None
        raise


def _parent_ome(container: str, dataset: str, mode: str, url: str):
    """The OME-Zarr geometry the parent group gives an array (``image.ome.zarr/0``), if any."""
    parent, _, level = dataset.rpartition("/")
    try:
        group = _open_node(container, parent, "r", url) if parent or dataset else None
    except VolumeError:
        return None
    if not isinstance(group, zarr.Group) or not ome_multiscales(dict(group.attrs)):
        return None
    try:
        _, voxel_size, offset, names = ome_geometry(dict(group.attrs), level, url)
    except FormatError:
        return None
    return voxel_size, offset, names


def open_volume(url: str | Path, mode: str = "r") -> Volume:
    """Open the array at ``container.zarr/dataset`` (or an OME-Zarr group, an N5 dataset ...).

    Parameters
    ----------
    url : str or Path
        ``container.zarr/dataset`` with the container a local path, a
        ``file://`` or an ``s3://`` URL; ``image.ome.zarr`` or
        ``container.zarr/group`` for an OME-Zarr multiscale group (level 0
        is read); ``container.n5/dataset`` or ``precomputed://PATH`` for
        inputs read through tensorstore.
    mode : str
        ``"r"`` or ``"r+"``.

    Raises
    ------
    VolumeError
        If the container or the dataset does not exist, cannot be reached or
        lacks a voxel size.
    """
    text = str(url)
    try:
        if text.startswith("precomputed://"):
            array, voxel_size, offset, names = open_precomputed(text)
            return Volume(array, text, voxel_size, offset, names)  # type: ignore[arg-type]
        try:
            container, dataset = split_array_url(url)
        except VolumeError:
            if not text.rstrip("/").endswith(".zarr"):
                raise
            container, dataset = text.rstrip("/"), ""  # a container that is itself an OME-Zarr image
        if container.endswith(".n5"):
            array, voxel_size, offset, names = open_n5(container, dataset, text)
            return Volume(array, text, voxel_size, offset, names)  # type: ignore[arg-type]
        node = _open_node(container, dataset, mode, text)
        if isinstance(node, zarr.Group):
            # an OME-Zarr image: read its finest level
            level, voxel_size, offset, names = ome_geometry(dict(node.attrs), None, text)
            array = node[level]
            return Volume(array, text, voxel_size, offset, names)
        attrs = dict(node.attrs)
        if "voxel_size" not in attrs and "resolution" not in attrs:
            geometry = _parent_ome(container, dataset, mode, text)
            if geometry is not None:
                return Volume(node, text, *geometry)
        voxel_size, offset, names = _read_geometry(node, text)
        return Volume(node, text, voxel_size, offset, names)
    except (FormatError, storage.StorageError) as error:
        raise VolumeError(str(error)) from None


# codec names a config may give, and what they are for
CODECS = ("blosc-zstd", "blosc-lz4", "zstd", "none")


def make_compressors(codec: str, dtype: Any, level: int | None = None) -> list:
    """The zarr v3 compressors for ``codec``.

    ``blosc-zstd`` (default) and ``blosc-lz4`` shuffle bytes (bits for
    1-byte types) before compressing, which is what makes uint64 labels and
    float affinities small; ``zstd`` compresses the raw bytes; ``none`` stores
    them as they are.

    Examples
    --------
    >>> make_compressors("zstd", "uint64")[0].level
    3
    """
    if codec not in CODECS:
        raise VolumeError(f"unknown codec {codec!r}; expected one of {', '.join(CODECS)}")
    if codec == "none":
        return []
    if codec == "zstd":
        return [ZstdCodec(level=3 if level is None else level)]
    itemsize = np.dtype(dtype).itemsize
    shuffle = BloscShuffle.bitshuffle if itemsize == 1 else BloscShuffle.shuffle
    cname = codec.split("-", 1)[1]
    clevel = (3 if cname == "zstd" else 5) if level is None else level
    return [BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle, typesize=itemsize)]


def create_volume(
    url: str | Path,
    roi: Roi,
    voxel_size: Sequence[int],
    dtype: Any,
    chunk_shape: Sequence[int],
    channels: Sequence[int] = (),
    axis_names: Sequence[str] | None = None,
    fill_value: float = 0,
    attrs: dict | None = None,
    shard_shape: Sequence[int] | None = None,
    codec: str = "blosc-zstd",
    level: int | None = None,
) -> Volume:
    """Create (or replace) an array covering ``roi`` and give it a fresh token.

    Parameters
    ----------
    url : str or Path
        ``container.zarr/dataset``; the container (local or ``s3://``) is created if needed.
    roi : Roi
        World ROI of the data; must be aligned to ``voxel_size``.
    voxel_size : sequence of int
        Voxel size in nm.
    dtype : dtype-like
        Element type.
    chunk_shape : sequence of int
        Spatial chunk shape in voxels (channels are never chunked); the inner
        chunks when ``shard_shape`` is given.
    channels : sequence of int
        Shape of the leading channel axes.
    shard_shape : sequence of int, optional
        Spatial shard shape in voxels, a whole number of chunks: each shard is
        one stored object holding its chunks. None: no sharding.
    codec : str
        One of :data:`CODECS`.
    level : int, optional
        Compression level; None: the codec's default.
    """
    container, dataset = split_array_url(url)
    voxel_size = coordinate(voxel_size)
    offset, shape = roi.to_voxels(voxel_size)
    names = tuple(axis_names) if axis_names else tuple([f"c{i}" for i in range(len(channels))] + ["z", "y", "x"][-len(voxel_size) :])
    world_offset = roi.offset
    attributes = {
        "voxel_size": list(voxel_size),
        "offset": list(world_offset),
        "axis_names": list(names),
        "units": ["nm"] * len(voxel_size),
        "multiscales": _ome_multiscales(names, voxel_size, world_offset, len(channels)),
        TOKEN_ATTR: uuid.uuid4().hex,
    }
    attributes.update(attrs or {})
    shards = None
    if shard_shape is not None:
        if any(s % c for s, c in zip(shard_shape, chunk_shape)):
            raise VolumeError(
                f"{url}: shard shape {list(shard_shape)} is not a whole number of chunks {list(chunk_shape)}"
            )
        shards = tuple(channels) + tuple(int(s) for s in shard_shape)
    store = storage.zarr_store(container)
    try:
        root = zarr.open_group(store, mode="a")
        # Make the intermediate groups explicitly so the container stays a valid hierarchy.
        parts = dataset.split("/")
        group = root
        for part in parts[:-1]:
            group = group.require_group(part)
        array = zarr.create_array(
            store,
            name=dataset,
            shape=tuple(channels) + tuple(shape),
            chunks=tuple(channels) + tuple(int(c) for c in chunk_shape),
            shards=shards,
            dtype=dtype,
            fill_value=fill_value,
            compressors=make_compressors(codec, dtype, level),
            attributes=attributes,
            dimension_names=list(names),
            overwrite=True,
        )
    except VolumeError:
        raise
    except Exception as error:
        if storage.is_remote(container):
            raise VolumeError(storage.explain(url, error)) from None
        raise
    return Volume(array, str(url), voxel_size, world_offset, names)


def delete_volume(url: str | Path) -> None:
    """Remove a dataset if it exists (used by ``--restart``)."""
    container, dataset = split_array_url(url)
    storage.remove(f"{container}/{dataset}")
