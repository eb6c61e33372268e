"""Ready pipeline configs, shipped inside the package as ``blockseg.configs``."""
