"""The run's ledger: which stages' results can be trusted.

Each stage's results carry a *token*: a fresh id written into its output
datasets (or kept in the store for graph-only stages) whenever the stage is
reset, together with a *fingerprint* of what the results were computed from
(the stage's parameters, the identity of its inputs and the tokens of the
stages it reads). At the start of a stage the ledger is trusted only if the
fingerprint still matches and every output still carries the token; otherwise
(an output deleted, a parameter changed, an upstream stage recomputed, or
``--restart``) the stage's rows, done marks and outputs are dropped and it runs
from scratch. That is how a rerun never trusts stale done marks.
"""

from __future__ import annotations

import hashlib
import json
import uuid

from blockseg.graph.base import StageState
from blockseg.layout import output_layout
from blockseg.run_state import AFFINITY_READERS, EMBEDDING_READERS, TARGET_STAGES, Run, input_identity
from blockseg.task import OutputSpec, Stage
from blockseg.volume import TOKEN_ATTR, VolumeError, create_volume, open_volume


def stage_needs(run: Run, stage: Stage) -> tuple[str, ...]:
    """The stages whose results ``stage`` reads.

    Besides the fixed ``needs``: the stage that makes the affinities
    (predict, embeddings_to_affinities) for those that read them, predict for
    the readers of predicted embeddings, the channels stage for
    channel_instances without input.channels, and, when mws or
    channel_instances make the pieces, those in place of fragments and the
    stitch stage in place of agglomerate.
    """
    needs = stage.needs
    reads_embeddings = stage.name in EMBEDDING_READERS or (stage.name == "mws" and run.mws_on_embeddings)
    if stage.name in AFFINITY_READERS and run.affinity_stage is not None and not reads_embeddings:
        needs = (run.affinity_stage,) + needs
    if reads_embeddings and run.embeddings_predicted:
        needs = ("predict",) + needs
    if stage.name == "channel_instances" and run.input_channels is None:
        needs = ("channels",) + needs
    if stage.name == "stitch":
        needs = (run.fragment_stage,)
    source = run.fragment_stage
    if source != "fragments" and stage.name in ("segments", "relabel", "evaluate"):
        needs = tuple({"fragments": source, "agglomerate": "stitch"}.get(n, n) for n in needs)
    return needs


def fingerprint(run: Run, stage: Stage) -> str:
    """What a stage's results depend on, hashed."""
    upstream = {}
    for name in stage_needs(run, stage):
        state = run.store.stage_state(name)
        upstream[name] = state.token if state else None
    description = {
        "stage": stage.name,
        "params": stage.params(run),
        # predicted affinities are identified by the predict stage's token instead
        "affinities": input_identity(run.input_affinities) if stage.name in AFFINITY_READERS else None,
        **(
            {"boundaries": input_identity(run.input_boundaries), "mask": input_identity(run.mask)}
            if stage.name in AFFINITY_READERS and (run.input_boundaries is not None or run.mask is not None)
            else {}
        ),
        "raw": input_identity(run.raw) if stage.name == "predict" else None,
        "ground_truth_input": input_identity(run.ground_truth) if stage.name in TARGET_STAGES else None,
        "ground_truth": input_identity(run.ground_truth) if stage.name == "evaluate" else None,
        "roi": [list(run.total_roi.offset), list(run.total_roi.shape)],
        "block_shape": list(run.block_shape),
        "upstream": upstream,
    }
    if stage.name in EMBEDDING_READERS or (stage.name == "mws" and run.mws_on_embeddings):
        description["embeddings"] = input_identity(run.input_embeddings)
    if stage.name == "channel_instances":
        description["channels_input"] = input_identity(run.input_channels)
    text = json.dumps(description, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def _outputs_intact(run: Run, stage: Stage, token: str) -> bool:
    for spec in stage.outputs(run):
        try:
            volume = open_volume(spec.url)
        except VolumeError:
            return False
        if volume.token != token:
            return False
    if stage.name == "segments":
        return all(run.store.lut_path(t).exists() for t in run.config.stages.segments.thresholds)
    return True


def is_current(run: Run, stage: Stage) -> bool:
    """Whether the ledger of ``stage`` can be trusted (else it is reset before running)."""
    state = run.store.stage_state(stage.name)
    if state is None or state.fingerprint != fingerprint(run, stage):
        return False
    return _outputs_intact(run, stage, state.token)


def _output_layout(run: Run, spec: OutputSpec) -> dict:
    """Chunks, shards and codec of an output, from ``storage.outputs`` in the config."""
    if not spec.aligned:
        # laid out on its own grid (halo slots): blocks do not write whole block-sized shards of it
        return {"chunk_shape": spec.chunk_shape}
    name = spec.url[len(run.config.volumes_url) + 1 :].split("/")[0]
    # a chunk_shape equal to the block is the stage's default, not a setting
    stage_chunk = spec.chunk_shape if tuple(spec.chunk_shape) != run.block_voxels else None
    return output_layout(run.config, name, run.block_voxels, stage_chunk)


def reset_stage(run: Run, stage: Stage) -> StageState:
    """Drop a stage's results and create its outputs afresh under a new token."""
    run.store.drop_stage(stage.name)
    token = uuid.uuid4().hex
    for spec in stage.outputs(run) if stage.create_outputs is None else ():
        layout = _output_layout(run, spec)
        create_volume(
            spec.url, spec.roi or run.total_roi, run.voxel_size, spec.dtype, layout.pop("chunk_shape"), spec.channels,
            axis_names=spec.axis_names, attrs={**spec.attrs, TOKEN_ATTR: token}, **layout,
        )
    if stage.create_outputs is not None:
        stage.create_outputs(run, token)
    if stage.name == "segments":
        run.store.drop_luts()
    state = StageState(fingerprint(run, stage), token)
    run.store.set_stage_state(stage.name, state)
    return state


def total_steps(run: Run, stage: Stage) -> int:
    """Blocks of a stage (1 for a global step)."""
    return 1 if stage.global_step else run.grid().num_blocks


def stage_progress(run: Run, stage: Stage) -> tuple[int, int, bool]:
    """``(done, total, current)`` for ``blockseg status``."""
    total = total_steps(run, stage)
    current = is_current(run, stage)
    done = len(run.store.done_blocks(stage.name)) if current else 0
    return done, total, current
