"""How a run's output volumes are stored: the container, shards, inner chunks, codecs.

By default every output is sharded with one shard per block: a block writes
exactly one object per output, whole (concurrent writers never share an
object), and a terabyte run makes ``10^12 / voxels per block`` objects per
output, about 6 x 10^4 for 64 x 512 x 512 blocks. Inner chunks (what a viewer
or a block's context read fetches) default to at most 64 voxels per axis.
``storage.outputs`` in the config overrides this per output name
(``fragments``, ``segmentation``, ``affinities`` ...) or for all of them
(``default``).
"""

from __future__ import annotations

from typing import Any, Sequence

from blockseg.config import ConfigError, OutputStorageConfig, PipelineConfig

INNER_CHUNK_MAX = 64


def default_inner_chunk(shard: Sequence[int], largest: int = INNER_CHUNK_MAX) -> tuple[int, ...]:
    """Per axis, the largest divisor of the shard's extent that is at most ``largest``.

    Examples
    --------
    >>> default_inner_chunk((32, 512, 96))
    (32, 64, 48)
    """
    return tuple(largest_divisor_at_most(extent, largest) for extent in shard)


def largest_divisor_at_most(extent: int, largest: int) -> int:
    """The largest divisor of ``extent`` that is at most ``largest`` (1 at least).

    Examples
    --------
    >>> largest_divisor_at_most(96, 64), largest_divisor_at_most(7, 4)
    (48, 1)
    """
    return max(d for d in range(1, max(1, min(extent, largest)) + 1) if extent % d == 0)


def _settings(config: PipelineConfig, name: str) -> OutputStorageConfig:
    """The output's own entry, fields it leaves unset taken from ``default``."""
    outputs = config.storage.outputs
    base = outputs.get("default", OutputStorageConfig())
    own = outputs.get(name)
    if own is None:
        return base
    merged = base.model_dump()
    merged.update(own.model_dump(exclude_unset=True))
    return OutputStorageConfig(**merged)


def output_layout(
    config: PipelineConfig, name: str, block_voxels: Sequence[int], stage_chunk: Sequence[int] | None = None
) -> dict[str, Any]:
    """Keyword arguments of :func:`~blockseg.volume.create_volume` for output ``name``.

    Parameters
    ----------
    name : str
        The output's first path component in the volumes container
        (``segmentation`` for ``segmentation/threshold_0.5``).
    block_voxels : sequence of int
        The block shape in voxels.
    stage_chunk : sequence of int, optional
        The stage's own ``chunk_shape`` setting, if any: the inner chunk
        unless ``storage.outputs`` names one.
    """
    settings = _settings(config, name)
    block = tuple(int(b) for b in block_voxels)
    chunk = settings.chunk_shape or stage_chunk
    if not settings.sharded:
        return {"chunk_shape": tuple(chunk or block), "shard_shape": None, "codec": settings.codec, "level": settings.level}
    shard = tuple(settings.shard_shape or block)
    chunk = tuple(chunk) if chunk else default_inner_chunk(shard)
    return {"chunk_shape": chunk, "shard_shape": shard, "codec": settings.codec, "level": settings.level}


def check_layouts(config: PipelineConfig, voxel_size: Sequence[int]) -> None:
    """Refuse, before any work, a layout whose objects a block would share with another block.

    Raises
    ------
    ConfigError
        If a block is not a whole number of shards (or, unsharded, of
        chunks), or a shard is not a whole number of inner chunks.
    """
    block_nm = list(config.block_shape)
    for name, entry in config.storage.outputs.items():
        key = f"storage.outputs.{name}"
        for field in ("shard_shape", "chunk_shape"):
            value = getattr(entry, field)
            if value is not None and len(value) != len(block_nm):
                raise ConfigError(f"config error: {key}.{field}: expected {len(block_nm)} values (z, y, x) in voxels, got {value}")
        unit_field = "shard_shape" if entry.sharded else "chunk_shape"
        unit = getattr(entry, unit_field)
        if unit is not None:
            unit_nm = [u * v for u, v in zip(unit, voxel_size)]
            if any(b % u for b, u in zip(block_nm, unit_nm)):
                raise ConfigError(
                    f"config error: block_shape: {block_nm} nm is not a multiple of {key}.{unit_field} {unit} voxels "
                    f"(= {unit_nm} nm); blocks must be whole shards so concurrent writes are safe"
                )
        if entry.sharded and entry.chunk_shape is not None:
            shard = entry.shard_shape or [b // v for b, v in zip(block_nm, voxel_size)]
            if any(s % c for s, c in zip(shard, entry.chunk_shape)):
                raise ConfigError(
                    f"config error: {key}.chunk_shape: {entry.chunk_shape} voxels does not divide the shard {shard} voxels"
                )


def prepare_storage(config: PipelineConfig) -> None:
    """Register the config's storage options in this process and check the output container.

    A wrong endpoint or a missing bucket fails here, in seconds, with one
    line naming the URL, before anything is written.
    """
    from blockseg import storage

    try:
        # the options (endpoint, profile, timeouts) are an object store's: fsspec's
        # http filesystem would pass them into every request and fail
        for protocol in {storage.split_protocol(url)[0] for url in _urls(config)} & {"s3", "s3a"}:
            storage.set_storage_options(protocol, config.storage.options)
        storage.check_container(config.volumes_url)
    except storage.StorageError as error:
        raise ConfigError(f"config error: storage.volumes: {error}") from None


def _urls(config: PipelineConfig) -> list[str]:
    inputs = [url for url in config.input.model_dump().values() if isinstance(url, str)]
    return [config.volumes_url] + [config.resolve(url) for url in inputs]
