"""The block functions of the built-in stages, by their former home.

Each now lives in its stage's module under :mod:`blockseg.tasks`; these names
stay importable from here for code written against earlier versions.
"""

from blockseg.task import pack_arrays, unpack_arrays
from blockseg.tasks.agglomerate import agglomerate_block
from blockseg.tasks.check import check_affinities_block
from blockseg.tasks.embeddings import embeddings_to_affinities_block, pca_preview_block
from blockseg.tasks.evaluate import contingency_block
from blockseg.tasks.fragments import fragments_block
from blockseg.tasks.instances import channel_instances_block, mws_block
from blockseg.tasks.predict import predict_block, probe_model
from blockseg.tasks.relabel import relabel_block
from blockseg.tasks.targets import targets_block

__all__ = [
    "agglomerate_block", "channel_instances_block", "check_affinities_block", "contingency_block",
    "embeddings_to_affinities_block", "fragments_block", "mws_block", "pack_arrays", "pca_preview_block",
    "predict_block", "probe_model", "relabel_block", "targets_block", "unpack_arrays",
]
