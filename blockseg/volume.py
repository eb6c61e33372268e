"""Zarr v3 arrays that know where they are in the world.

A :class:`Volume` wraps one zarr array whose last ``len(voxel_size)`` axes are
spatial (z, y, x) and whose leading axes, if any, are channels. Its
attributes carry ``voxel_size``, ``offset`` (nm) and ``axis_names``, plus an
OME-Zarr style ``multiscales`` entry describing the array as a single scale
level, so other tools find the same geometry.

Arrays are addressed as ``path/to/container.zarr/dataset/path``: the part up
to and including the first component that ends in ``.zarr`` is the container.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from blockseg.geometry import Coordinate, Roi, coordinate

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
        if part.endswith(".zarr"):
            container = "/".join(parts[: i + 1]) or "/"
            dataset = "/".join(parts[i + 1 :])
            if not dataset:
                raise VolumeError(f"{url}: names a container, not a dataset inside it")
            return container, dataset
    raise VolumeError(f"{url}: expected 'container.zarr/dataset' (no '.zarr' component found)")


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

    def read(self, roi: Roi, pad_value: float = 0) -> np.ndarray:
        """Read ``roi`` (snapped outwards to voxels); voxels outside the data are ``pad_value``."""
        roi = roi.snap(self.voxel_size, "grow")
        _, shape = roi.to_voxels(self.voxel_size)
        out = np.full(self.channel_shape + shape, pad_value, dtype=self.dtype)
        inside = roi.intersect(self.roi)
        if inside.empty:
            return out
        source = inside.slices(self.voxel_size, self.offset)
        target = inside.slices(self.voxel_size, roi.offset)
        channels = tuple(slice(None) for _ in self.channel_shape)
        out[channels + target] = self.array[channels + source]
        return out

    def write(self, roi: Roi, data: np.ndarray) -> None:
        """Write ``data`` to ``roi``, which must lie inside the data and be voxel aligned."""
        if not self.roi.contains(roi):
            raise VolumeError(f"{self.url}: write ROI {roi} outside the data {self.roi}")
        channels = tuple(slice(None) for _ in self.channel_shape)
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


def open_volume(url: str | Path, mode: str = "r") -> Volume:
    """Open the array at ``container.zarr/dataset``.

    Raises
    ------
    VolumeError
        If the container or the dataset does not exist or lacks a voxel size.
    """
    container, dataset = split_array_url(url)
    if not Path(container).exists():
        raise VolumeError(f"{url}: container {container} does not exist")
    try:
        array = zarr.open_array(container, path=dataset, mode=mode)
    except (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError, zarr.errors.NodeTypeValidationError) as error:
        raise VolumeError(f"{url}: no array '{dataset}' in {container}") from error
    voxel_size, offset, names = _read_geometry(array, str(url))
    return Volume(array, str(url), voxel_size, offset, names)


def default_compressor(dtype: np.dtype) -> BloscCodec:
    """Blosc-zstd with shuffle: labels and affinities compress well with it."""
    itemsize = np.dtype(dtype).itemsize
    shuffle = BloscShuffle.bitshuffle if itemsize == 1 else BloscShuffle.shuffle
    return BloscCodec(cname="zstd", clevel=3, shuffle=shuffle, typesize=itemsize)


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
) -> Volume:
    """Create (or replace) an array covering ``roi`` and give it a fresh token.

    Parameters
    ----------
    url : str or Path
        ``container.zarr/dataset``; the container is created if needed.
    roi : Roi
        World ROI of the data; must be aligned to ``voxel_size``.
    voxel_size : sequence of int
        Voxel size in nm.
    dtype : dtype-like
        Element type.
    chunk_shape : sequence of int
        Spatial chunk shape in voxels (channels are never chunked).
    channels : sequence of int
        Shape of the leading channel axes.
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
    root = zarr.open_group(container, mode="a")
    # Make the intermediate groups explicitly so the container stays a valid hierarchy.
    parts = dataset.split("/")
    group = root
    for part in parts[:-1]:
        group = group.require_group(part)
    array = zarr.create_array(
        container,
        name=dataset,
        shape=tuple(channels) + tuple(shape),
        chunks=tuple(channels) + tuple(int(c) for c in chunk_shape),
        dtype=dtype,
        fill_value=fill_value,
        compressors=[default_compressor(np.dtype(dtype))],
        attributes=attributes,
        dimension_names=list(names),
        overwrite=True,
    )
    return Volume(array, str(url), voxel_size, world_offset, names)


def delete_volume(url: str | Path) -> None:
    """Remove a dataset if it exists (used by ``--restart``)."""
    import shutil

    container, dataset = split_array_url(url)
    path = Path(container) / dataset
    if path.exists():
        shutil.rmtree(path)
