"""The pipeline's names in one place, for the CLI and for code written against earlier versions.

Where things live: the run state in :mod:`blockseg.run_state`, opening a run
in :mod:`blockseg.inputs`, the ledger in :mod:`blockseg.ledger`, running
stages in :mod:`blockseg.engine`, the stage registry in
:mod:`blockseg.registry`, and each stage in its module under
:mod:`blockseg.tasks`.
"""

from blockseg.engine import run_one_stage, run_pipeline, select_stages
from blockseg.inputs import open_run
from blockseg.ledger import fingerprint, is_current, reset_stage, stage_needs, stage_progress
from blockseg.registry import STAGE_ORDER, STAGES
from blockseg.run_state import FRAGMENT_STAGES, TARGET_STAGES, InputError, Run
from blockseg.task import OutputSpec, Stage
from blockseg.tasks.fragments import fragments_context
from blockseg.tasks.targets import check_targets

__all__ = [
    "FRAGMENT_STAGES", "STAGES", "STAGE_ORDER", "TARGET_STAGES", "InputError", "OutputSpec", "Run", "Stage",
    "check_targets", "fingerprint", "fragments_context", "is_current", "open_run", "reset_stage", "run_one_stage",
    "run_pipeline", "select_stages", "stage_needs", "stage_progress",
]
