"""blockseg: blockwise segmentation of large EM volumes on dask, and a framework for your own blockwise tasks.

>>> import blockseg
>>> report = blockseg.run("pipeline.yaml")                          # doctest: +SKIP
>>> report = blockseg.blockwise(smooth, {"raw": "in.zarr/raw"},     # doctest: +SKIP
...                             {"smoothed": "out.zarr/smoothed"}, context=60)

Tasks subclass :class:`blockseg.Task` (see :mod:`blockseg.task`).
"""

__version__ = "0.1.0"

__all__ = ["Read", "Report", "Task", "Write", "blockwise", "run", "__version__"]


def __getattr__(name: str):
    # imported on first use: `import blockseg` (the CLI's first line) stays light
    if name in ("Task", "Read", "Write"):
        from blockseg import task

        return getattr(task, name)
    if name in ("run", "blockwise", "Report"):
        from blockseg import api

        return getattr(api, name)
    raise AttributeError(f"module 'blockseg' has no attribute {name!r}")
