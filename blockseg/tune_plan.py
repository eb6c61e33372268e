"""The plan of a ``blockseg tune`` sweep: its arguments checked, and each combination's folder and config.

Each combination is an ordinary small run of the config restricted to the
ROI (``roi:``), with its own output folder ``<output>/tune/<key>/`` (its own
graph store, ledger and volumes), ``key`` a hash of the combination's values
and the ROI, so a rerun of the same sweep finds the same folders.

Everything that can be wrong with the command is found here, before any
work and before anything is written: a ``--grid`` key that is not a config
key, a value that does not validate (each combination's config goes through
the same checks as ``blockseg run``, against the inputs, with its output in
a throw-away folder), a ROI outside the volume or without ground truth.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel

from blockseg.errors import ConfigError

#: Top-level keys a grid may not vary: they say where and how a run goes, not what it computes.
UNTUNABLE = ("output", "graph", "roi", "cluster", "scheduler", "storage", "input.ground_truth")


@dataclass
class Combination:
    """One point of the grid: its values, its folder and its validated sub-config."""

    values: dict[str, Any]
    key: str
    folder: Path
    data: dict
    config: Any  # PipelineConfig
    baseline: bool = False  # the config's own values
    in_grid: bool = True  # False: the config as it is, added because the grid does not hold its values

    @property
    def digest(self) -> str:
        """A hash of the whole sub-config: a stored result counts only while it is unchanged."""
        return hashlib.sha256(json.dumps(self.data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        return ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in self.values.items())


@dataclass
class Outcome:
    """What one combination's run gave."""

    combination: Combination
    scores: dict | None
    seconds: float
    recomputed: bool
    failed: str | None = None
    f1: dict[str, float] = field(default_factory=dict)  # per threshold, at the metric's IoU


@dataclass
class Sweep:
    """A checked sweep: what runs where, decided before any work."""

    config_path: Path
    base_data: dict
    base_config: Any
    roi: Any  # Roi
    grid: dict[str, list]
    metric: str
    iou: float | None
    combinations: list[Combination]
    folder: Path


# -- the command line's words ---------------------------------------------------


def parse_metric(text: str) -> tuple[str, float | None]:
    """``voi``, ``rand`` or ``f1@IOU`` as (name, IoU threshold or None).

    Examples
    --------
    >>> parse_metric("f1@0.5")
    ('f1', 0.5)
    """
    if text in ("voi", "rand"):
        return text, None
    if text.startswith("f1@"):
        try:
            iou = float(text[3:])
        except ValueError:
            iou = -1.0
        if 0.0 <= iou <= 1.0:
            return "f1", iou
    raise ConfigError(f"--metric: {text!r} is not voi, rand or f1@IOU with IOU in [0, 1] (e.g. f1@0.5)")


def _split_values(text: str) -> list[str]:
    """Split at commas outside brackets, so ``[1,2],[3,4]`` is two values."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    return [value.strip() for value in values]


def check_key(key: str) -> None:
    """Raise :class:`ConfigError` unless ``key`` (dotted) names a value of the pipeline config.

    Examples
    --------
    >>> check_key("stages.fragments.min_seed_distance")
    >>> check_key("stages.fragments.min_seed_distanse")
    Traceback (most recent call last):
    ...
    blockseg.errors.ConfigError: --grid stages.fragments.min_seed_distanse: not a config key (stages.fragments has: method, context, ...)
    """
    from blockseg.config import PipelineConfig

    if any(key == bad or key.startswith(bad + ".") for bad in UNTUNABLE):
        raise ConfigError(f"--grid {key}: not tunable (it says where or how a run goes, not what it computes)")
    model: Any = PipelineConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = {name: f for name, f in model.model_fields.items() if name != "base_dir"}
        if part not in fields:
            where = ".".join(parts[:depth]) or "the config"
            names = list(fields)
            shown = ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")
            raise ConfigError(f"--grid {key}: not a config key ({where} has: {shown})" if depth else
                              f"--grid {key}: not a config key (the config has: {', '.join(names)})")
        annotation = fields[part].annotation
        sub = next((a for a in getattr(annotation, "__args__", (annotation,))
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if depth == len(parts) - 1:
            if sub is not None:
                raise ConfigError(f"--grid {key}: a section, not a value; name one of its keys "
                                  f"({', '.join(sub.model_fields)})")
            return
        if sub is None:
            raise ConfigError(f"--grid {key}: not a config key ({'.'.join(parts[:depth + 1])} is a value)")
        model = sub


def parse_grid(entries: Sequence[str]) -> dict[str, list]:
    """``key=v1,v2`` entries as {key: [values]}; values are read as YAML (``60`` an int, ``mean`` a string).

    Examples
    --------
    >>> parse_grid(["stages.agglomerate.scoring=mean,hist_quant_50"])
    {'stages.agglomerate.scoring': ['mean', 'hist_quant_50']}
    """
    grid: dict[str, list] = {}
    if not entries:
        raise ConfigError("--grid: give at least one, e.g. --grid stages.fragments.min_seed_distance=60,100")
    for entry in entries:
        key, sep, text = entry.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ConfigError(f"--grid {entry!r}: expected KEY=VALUE[,VALUE...]")
        check_key(key)
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice; list all its values in one --grid")
        try:
            values = [yaml.safe_load(value) for value in _split_values(text)]
        except yaml.YAMLError:
            raise ConfigError(f"--grid {entry!r}: a value is not valid YAML") from None
        if any(value is None for value in values):
            raise ConfigError(f"--grid {entry!r}: an empty value")
        grid[key] = values
    return grid


# -- planning: every check before any work ---------------------------------------


def _set(data: dict, key: str, value: Any) -> None:
    target = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[parts[-1]] = value


def _get(config: Any, key: str) -> Any:
    value = config
    for part in key.split("."):
        value = getattr(value, part, None) if value is not None else None
    return value.model_dump() if isinstance(value, BaseModel) else value


def _raw(data: Any, key: str, default: Any) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return default
        data = data[part]
    return data


def _check_roi(config: Any, roi_values: Sequence[int]):
    """The ROI as a :class:`~blockseg.geometry.Roi`, inside the volume and on ground truth."""
    from blockseg.geometry import Roi
    from blockseg.volume import VolumeError, open_volume

    try:
        roi = Roi(roi_values[:3], roi_values[3:])
    except ValueError as error:
        raise ConfigError(f"--roi: {error}") from None
    if roi.empty:
        raise ConfigError(f"--roi: {roi} is empty")
    if not config.input.ground_truth:
        raise ConfigError("--roi: the config has no input.ground_truth; tune scores every combination against it")
    given = [k for k in ("affinities", "boundaries", "embeddings", "channels", "raw") if getattr(config.input, k)]
    reference_key = given[0] if given else "ground_truth"
    try:
        truth = open_volume(config.resolve(config.input.ground_truth))
        reference = open_volume(config.resolve(getattr(config.input, reference_key)))
    except VolumeError as error:
        raise ConfigError(f"--roi: {error}") from None
    if not roi.is_aligned(reference.voxel_size):
        raise ConfigError(f"--roi: {roi} is not aligned to the voxel size {list(reference.voxel_size)} nm")
    if not reference.roi.contains(roi):
        raise ConfigError(f"--roi: {roi} is outside the volume {reference.roi} (input.{reference_key})")
    if not truth.roi.contains(roi):
        raise ConfigError(f"--roi: {roi} has no ground truth: input.ground_truth covers {truth.roi}")
    # a few z planes at a time (16 Mvoxel): a ROI for tuning is small, but memory should not depend on it
    plane = (roi.shape[1] // truth.voxel_size[1]) * (roi.shape[2] // truth.voxel_size[2])
    slab = max(1, 2**24 // max(1, plane)) * truth.voxel_size[0]
    for z in range(roi.offset[0], roi.end[0], slab):
        part = Roi((z, *roi.offset[1:]), (min(slab, roi.end[0] - z), *roi.shape[1:]))
        if truth.read(part).any():
            return roi
    raise ConfigError(f"--roi: {roi} has no ground truth: input.ground_truth is 0 (unlabelled) everywhere in it")


def _dry_open(config: Any, what: str) -> None:
    """The checks ``blockseg run`` makes against the inputs, with the output in a throw-away folder."""
    from blockseg.graph import StoreError
    from blockseg.inputs import open_run
    from blockseg.registry import stages_of
    from blockseg.run_state import InputError
    from blockseg.volume import VolumeError

    scratch = Path(tempfile.mkdtemp(prefix="blockseg-tune-check-"))
    trial = config.model_copy(update={"output": str(scratch / "out")})
    trial.base_dir = config.base_dir
    trial._user_tasks = config.user_tasks
    try:
        run = open_run(trial)
        try:
            scores = stages_of(run)["evaluate"].enabled(run)
        finally:
            run.store.close()
    except (ConfigError, InputError, VolumeError, StoreError) as error:
        raise ConfigError(f"{what}: {str(error).removeprefix('config error: ')}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not scores:
        raise ConfigError(f"{what}: makes no segmentation to score (no affinities, boundaries or instances)")


def plan_sweep(config_path: str | Path, roi: Sequence[int], grid_entries: Sequence[str], metric: str = "voi") -> Sweep:
    """Check everything and decide each combination's folder and config; writes nothing.

    Parameters
    ----------
    config_path : str or Path
        The pipeline YAML.
    roi : sequence of 6 int
        Offset and shape in nm; must lie in the volume and hold ground truth.
    grid_entries : sequence of str
        ``key=v1,v2,...`` with dotted config keys.
    metric : str
        ``voi``, ``rand`` or ``f1@IOU``.

    Returns
    -------
    Sweep

    Raises
    ------
    ConfigError
        One line naming the bad argument, before anything is written.
    """
    from blockseg.config import load_config, parse_config
    from blockseg.inputs import with_data_defaults

    name, iou = parse_metric(metric)
    grid = parse_grid(grid_entries)
    config_path = Path(config_path).resolve()
    # the keys a config leaves to the data compare as the run would fill them
    base_config = with_data_defaults(load_config(config_path))
    base_data = yaml.safe_load(config_path.read_text())
    checked_roi = _check_roi(base_config, roi)
    folder = base_config.output_dir / "tune"
    keys = list(grid)
    base_values = tuple(_get(base_config, key) for key in keys)
    # the config's values as its YAML writes them (100, not the model's 100.0), else the defaults
    base_shown = {key: _raw(base_data, key, value) for key, value in zip(keys, base_values)}
    combinations, seen = [], set()
    points = [dict(zip(keys, values)) for values in itertools.product(*grid.values())]
    for values, baseline in [(v, False) for v in points] + [({}, True)]:
        data = copy.deepcopy(base_data)
        for key, value in values.items():
            _set(data, key, value)
        what = "--grid " + ", ".join(f"{k}={v}" for k, v in values.items()) if values else "the config"
        try:
            whole = with_data_defaults(parse_config(copy.deepcopy(data), config_path.parent))  # CONFIG.tuned.yaml
        except ConfigError as error:
            raise ConfigError(f"{what}: {str(error).removeprefix('config error: ')}") from None
        validated = tuple(_get(whole, key) for key in keys)
        same = json.dumps(validated, sort_keys=True, default=str)  # values may be lists: compare as text
        if baseline and same in seen:
            break  # the config's own values are in the grid
        if same in seen:
            raise ConfigError(f"{what}: the same combination twice")
        seen.add(same)
        identity = {"grid": dict(zip(keys, validated)), "roi": [list(checked_roi.offset), list(checked_roi.shape)]}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
        sub = _sub_config_data(data, checked_roi, folder / key)
        config = parse_config(copy.deepcopy(sub), config_path.parent)
        _dry_open(config, what)
        combinations.append(Combination(values if values else base_shown, key, folder / key,
                                        sub, config, baseline=baseline or validated == base_values, in_grid=not baseline))
    return Sweep(config_path, base_data, base_config, checked_roi, grid, name, iou, combinations, folder)


def _sub_config_data(data: dict, roi: Any, folder: Path) -> dict:
    """A combination's config: the ROI, its own output folder and store, no progress bars."""
    sub = copy.deepcopy(data)
    sub["roi"] = {"offset": [int(v) for v in roi.offset], "shape": [int(v) for v in roi.shape]}
    sub["output"] = str(folder)
    sub.pop("graph", None)  # default: SQLite in the combination's own folder
    stages = sub.get("stages") if isinstance(sub.get("stages"), dict) else {}
    sub["stages"] = {**stages, "evaluate": {"enabled": True}}  # scoring is the point of a combination
    if isinstance(sub.get("storage"), dict):
        sub["storage"].pop("volumes", None)  # volumes in the combination's folder too
    if not isinstance(sub.get("scheduler"), dict):
        sub["scheduler"] = {}
    sub["scheduler"]["progress"] = False  # many runs at once: their bars would only interleave
    return sub
