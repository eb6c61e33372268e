"""blockseg: blockwise segmentation of large EM volumes on dask."""

__version__ = "0.1.0"
