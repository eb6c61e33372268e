"""Inputs written by other tools: OME-Zarr groups, N5 and neuroglancer precomputed.

OME-Zarr (0.4 and 0.5) groups are read with zarr; their ``multiscales``
metadata gives the voxel size (``scale``) and offset (``translation``) of
level 0. N5 and neuroglancer precomputed volumes are read through
tensorstore (the ``[tensorstore]`` extra) behind a small read-only adapter
that looks enough like a zarr array for :class:`~blockseg.volume.Volume`.

Axis order: blockseg works in C order (channels, z, y, x). N5 lists its
dimensions x first (the Java convention, which zarr's N5 store, funlib and
daisy follow), and precomputed volumes are (x, y, z, channel); both are
transposed on reading, and their ``resolution`` / ``offset`` lists reversed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

# metres per unit, for the spatial units OME-Zarr allows that EM data uses
_NM_PER_UNIT = {
    None: 1.0, "": 1.0, "nanometer": 1.0, "nm": 1.0, "micrometer": 1e3, "um": 1e3, "µm": 1e3,
    "angstrom": 0.1, "millimeter": 1e6, "picometer": 1e-3,
}


class FormatError(ValueError):
    """A dataset's metadata cannot be turned into a voxel size and offset."""


def _whole_nm(values: Sequence[float], what: str, url: str) -> tuple[int, ...]:
    rounded = tuple(int(round(v)) for v in values)
    if any(abs(v - r) > 1e-6 * max(1.0, abs(v)) for v, r in zip(values, rounded)):
        raise FormatError(f"{url}: {what} {list(values)} nm is not a whole number of nm; blockseg needs integer nm")
    return rounded


def ome_multiscales(attrs: Mapping[str, Any]) -> list | None:
    """The ``multiscales`` list of OME-Zarr 0.5 (under ``ome``) or 0.4 (top level) attributes."""
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and "multiscales" in ome:
        return ome["multiscales"]
    return attrs.get("multiscales")


def _apply(transforms: Sequence[Mapping], scale: np.ndarray, translation: np.ndarray, url: str) -> None:
    for transform in transforms or ():
        kind = transform.get("type")
        if kind == "scale":
            factor = np.asarray(transform["scale"], float)
            scale *= factor
            translation *= factor
        elif kind == "translation":
            translation += np.asarray(transform["translation"], float)
        elif kind == "identity":
            continue
        else:
            raise FormatError(f"{url}: coordinate transformation {kind!r} is not supported (scale, translation)")


def ome_geometry(attrs: Mapping[str, Any], dataset: str | None, url: str) -> tuple[str, tuple[int, ...], tuple[int, ...], tuple[str, ...]]:
    """Level path, voxel size (nm), offset (nm) and axis names of an OME-Zarr multiscale image.

    Parameters
    ----------
    attrs : mapping
        The group's attributes.
    dataset : str or None
        The level to read (its ``path``); None: the first (finest) level.

    Examples
    --------
    >>> attrs = {"multiscales": [{"axes": [{"name": "z", "type": "space", "unit": "nanometer"},
    ...     {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
    ...     "datasets": [{"path": "s0", "coordinateTransformations": [
    ...         {"type": "scale", "scale": [40, 8, 8]}, {"type": "translation", "translation": [400, 80, 0]}]}]}]}
    >>> ome_geometry(attrs, None, "raw.ome.zarr")
    ('s0', (40, 8, 8), (400, 80, 0), ('z', 'y', 'x'))
    """
    multiscales = ome_multiscales(attrs)
    if not multiscales:
        raise FormatError(f"{url}: no OME-Zarr 'multiscales' metadata")
    image = multiscales[0]
    levels = image.get("datasets") or []
    chosen = levels[0] if dataset is None else next((d for d in levels if d.get("path") == dataset), None)
    if chosen is None:
        raise FormatError(f"{url}: OME-Zarr multiscales has no level {dataset!r} (levels: {[d.get('path') for d in levels]})")
    axes = image.get("axes") or [{"name": n} for n in ("z", "y", "x")]
    axes = [{"name": a} if isinstance(a, str) else dict(a) for a in axes]  # 0.3 wrote plain names
    ndim = len(axes)
    scale = np.ones(ndim)
    translation = np.zeros(ndim)
    # dataset transforms first, then the image-wide ones (OME-Zarr's order)
    _apply(chosen.get("coordinateTransformations"), scale, translation, url)
    _apply(image.get("coordinateTransformations"), scale, translation, url)
    spatial = [i for i, a in enumerate(axes) if a.get("type", "space" if a["name"] in "zyx" else "") == "space"]
    if not spatial or spatial != list(range(ndim - len(spatial), ndim)):
        raise FormatError(f"{url}: OME-Zarr axes {[a['name'] for a in axes]} must end with the spatial axes")
    units = {axes[i].get("unit") for i in spatial}
    unknown = [u for u in units if u not in _NM_PER_UNIT]
    if unknown:
        raise FormatError(f"{url}: unit {unknown[0]!r} is not supported (nanometer, micrometer, angstrom ...)")
    factors = np.array([_NM_PER_UNIT[axes[i].get("unit")] for i in spatial])
    voxel_size = _whole_nm(scale[spatial] * factors, "voxel size", url)
    offset = _whole_nm(translation[spatial] * factors, "offset", url)
    return chosen["path"], voxel_size, offset, tuple(a["name"] for a in axes)


class TensorstoreArray:
    """A read-only, zarr-like view of a tensorstore array (shape, dtype, chunks, attrs, slicing)."""

    shards = None

    def __init__(self, store, attrs: Mapping[str, Any] | None = None):
        self._store = store
        self.attrs = dict(attrs or {})

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self._store.shape)

    @property
    def ndim(self) -> int:
        return self._store.rank

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._store.dtype.numpy_dtype)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self._store.chunk_layout.read_chunk.shape)

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self._store[key].read().result())

    def __setitem__(self, key, value) -> None:
        raise FormatError("arrays read through tensorstore (N5, precomputed) are inputs only")


def _tensorstore():
    try:
        import tensorstore
    except ImportError:
        raise FormatError("N5 and neuroglancer precomputed inputs need tensorstore: pip install 'blockseg[tensorstore]'") from None
    return tensorstore


def _kvstore(container: str) -> dict:
    from blockseg.storage import split_protocol

    protocol, path = split_protocol(container)
    if protocol == "file":
        return {"driver": "file", "path": str(Path(path).absolute())}
    if protocol in ("http", "https"):
        return {"driver": "http", "base_url": str(container)}
    raise FormatError(f"{container}: N5 / precomputed inputs are read from local paths or http(s) URLs, not {protocol}://")


def open_n5(container: str, dataset: str, url: str) -> tuple[TensorstoreArray, tuple[int, ...], tuple[int, ...], tuple[str, ...]]:
    """An N5 dataset with its voxel size and offset (``resolution`` / ``pixelResolution``, ``offset``)."""
    ts = _tensorstore()
    attrs = _read_json(container, f"{dataset}/attributes.json", url)
    rank = len(attrs.get("dimensions", ()))
    resolution = attrs.get("resolution")
    if resolution is None and isinstance(attrs.get("pixelResolution"), Mapping):
        resolution = attrs["pixelResolution"].get("dimensions")
    if resolution is None:
        raise FormatError(f"{url}: no 'resolution' (or pixelResolution) attribute; blockseg needs the voxel size in nm")
    if len(resolution) != rank and "resolution" in attrs:
        # tensorstore reads 'resolution' as one entry per dimension (x, y, z, c)
        raise FormatError(
            f"{url}: 'resolution' has {len(resolution)} entries for {rank} dimensions; "
            f"give one per dimension, x first (e.g. [8, 8, 40, 1] for x, y, z, channels)"
        )
    try:
        store = ts.open({"driver": "n5", "kvstore": _kvstore(container), "path": dataset}, open=True, read=True).result()
    except ValueError as error:
        raise FormatError(f"{url}: cannot open as N5 ({str(error).splitlines()[0]})") from None
    # blockseg's arrays end with (z, y, x); dimensions before them are channels
    spatial = min(3, rank)
    # N5 lists axes x first: reverse to blockseg's (c, z, y, x)
    voxel_size = _whole_nm(list(resolution)[::-1][-spatial:], "resolution", url)
    offset = _whole_nm(list(attrs.get("offset", [0] * rank))[::-1][-spatial:], "offset", url)
    names = tuple([f"c{i}" for i in range(rank - spatial)] + ["z", "y", "x"][-spatial:])
    return TensorstoreArray(store.T, attrs), voxel_size, offset, names


def open_precomputed(url: str) -> tuple[TensorstoreArray, tuple[int, ...], tuple[int, ...], tuple[str, ...]]:
    """Scale 0 of a neuroglancer precomputed volume (``precomputed://PATH``), as (z, y, x) or (c, z, y, x)."""
    ts = _tensorstore()
    container = url.split("://", 1)[1] if url.startswith("precomputed://") else url
    info = _read_json(container, "info", url)
    scale = info["scales"][0]
    try:
        store = ts.open(
            {"driver": "neuroglancer_precomputed", "kvstore": _kvstore(container), "scale_index": 0}, open=True, read=True
        ).result()
    except ValueError as error:
        raise FormatError(f"{url}: cannot open as neuroglancer precomputed ({str(error).splitlines()[0]})") from None
    voxel_size = _whole_nm(list(scale["resolution"])[::-1], "resolution", url)
    offset_voxels = list(scale.get("voxel_offset", [0, 0, 0]))[::-1]
    offset = tuple(o * v for o, v in zip(offset_voxels, voxel_size))
    # tensorstore keeps the volume's own origin; blockseg's arrays start at 0
    store = store.translate_to[0, 0, 0, 0]
    if int(info.get("num_channels", 1)) == 1:
        store, names = store[..., 0].T, ("z", "y", "x")
    else:
        store, names = store.T, ("c0", "z", "y", "x")
    return TensorstoreArray(store, {"voxel_size": list(voxel_size), "offset": list(offset)}), voxel_size, offset, names


def _read_json(container: str, name: str, url: str) -> dict:
    from blockseg.storage import filesystem

    fs, path = filesystem(container)
    try:
        with fs.open(f"{path.rstrip('/')}/{name}", "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        raise FormatError(f"{url}: no {name} found") from None
