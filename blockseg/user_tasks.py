"""Users' tasks: found by ``python:pkg.module:Task`` or by name in the ``blockseg.tasks`` entry-point group.

A stage of the YAML with a ``task:`` key (or named like an installed entry
point) is a user's task; its other keys are the task's parameters::

    stages:
      smooth:
        task: python:mylab.tasks:Smooth
        sigma: 40

Everything here fails in one line naming the key, before any work: a path
that does not import, a class without a block function, parameters that do
not validate, two stages writing one output, a read that nothing provides.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

from pydantic import ValidationError

from blockseg.errors import ConfigError
from blockseg.task import Task, context_per_axis

ENTRY_POINT_GROUP = "blockseg.tasks"
PREFIX = "python:"
# input keys a task may read by name
INPUTS = ("raw", "affinities", "boundaries", "mask", "ground_truth", "embeddings", "channels")


def installed_tasks() -> dict[str, metadata.EntryPoint]:
    """The tasks pip packages register in the ``blockseg.tasks`` entry-point group, by name."""
    return {entry.name: entry for entry in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_task_class(spec: str, key: str) -> type[Task]:
    """The class named by ``python:pkg.module:Class`` or an entry-point name; ConfigError naming ``key`` otherwise."""
    if spec.startswith(PREFIX):
        module_name, _, attribute = spec[len(PREFIX):].partition(":")
        if not module_name or not attribute:
            raise ConfigError(f"config error: {key}: {spec!r}: expected python:package.module:Class")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                target = getattr(target, part)
        except ImportError as error:
            raise ConfigError(f"config error: {key}: cannot import {spec} ({error})") from None
        except AttributeError:
            raise ConfigError(f"config error: {key}: {spec}: module {module_name} has no {attribute}") from None
    else:
        entry = installed_tasks().get(spec)
        if entry is None:
            known = ", ".join(sorted(installed_tasks())) or "none installed"
            raise ConfigError(
                f"config error: {key}: {spec!r} is no installed task ({known}); give python:package.module:Class"
            )
        try:
            target = entry.load()
        except Exception as error:  # noqa: BLE001 - a broken package: say which, in one line
            raise ConfigError(f"config error: {key}: entry point {spec} ({entry.value}) does not load: {error}") from None
    if not (isinstance(target, type) and issubclass(target, Task)):
        raise ConfigError(f"config error: {key}: {spec} is not a blockseg.Task subclass")
    if not target.has_block_function():
        raise ConfigError(
            f"config error: {key}: {spec} has no block function: define process(self, params, ...) "
            f"or process_block(self, params, block, volumes, outputs)"
        )
    return target


def task_from_config(name: str, entry: Any, built_in: frozenset[str]) -> Task:
    """A configured user task: its class from ``task:`` (or the stage's name), its parameters from the other keys."""
    key = f"stages.{name}"
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        raise ConfigError(f"config error: {key}: expected a mapping of parameters, got {type(entry).__name__}")
    params = dict(entry)
    spec = params.pop("task", name)
    if not isinstance(spec, str):
        raise ConfigError(f"config error: {key}.task: expected python:package.module:Class or a task name")
    cls = load_task_class(spec, f"{key}.task")
    try:
        task = cls(params, name=name)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(cls.Params.model_fields) or "none"
            raise ConfigError(f"config error: {key}.{where}: unknown parameter of {spec} (allowed: {allowed})") from None
        got = first.get("input")
        detail = f", got {got!r}" if first["type"] != "missing" and not isinstance(got, (dict, list)) else ""
        raise ConfigError(f"config error: {key}.{where}: {first['msg']}{detail}") from None
    if name in built_in:
        raise ConfigError(f"config error: {key}: {name} is a built-in stage; give your task another name")
    return task


def split_user_stages(stages: Any, built_in: frozenset[str]) -> tuple[Any, dict[str, Any]]:
    """``stages:`` without the user's tasks, and those entries by name (YAML order)."""
    if not isinstance(stages, dict):
        return stages, {}
    installed = None
    user = {}
    for name, entry in stages.items():
        if isinstance(entry, dict) and "task" in entry:
            user[name] = entry
        elif name not in built_in:
            installed = installed_tasks() if installed is None else installed
            if name in installed:
                user[name] = entry
    return {k: v for k, v in stages.items() if k not in user}, user


def bind_tasks(run, tasks: dict[str, Task], writers: dict[str, str]) -> list[Task]:
    """Resolve what each user task reads and writes to URLs, set its needs, and order the tasks.

    ``writers`` maps the URL of every dataset a built-in stage of the run
    writes to the stage. Returns the tasks so that each comes after the
    tasks it reads from.
    """
    config = run.config
    writers = dict(writers)
    for name, task in tasks.items():
        task.resolved_writes = {}
        for output, spec in task.writes(task.parameters).items():
            url = config.resolve(spec.url) if spec.url else run.dataset_url(output)
            if url in writers:
                raise ConfigError(f"config error: stages.{name}: writes {output} ({url}), which stages.{writers[url]} writes too")
            writers[url] = name
            task.resolved_writes[output] = url
    for name, task in tasks.items():
        task.resolved_reads, needs = {}, []
        for read_name, read in task.reads(task.parameters).items():
            url = _source_url(run, read.source, writers, f"stages.{name}")
            if url in writers:
                if writers[url] == name:
                    raise ConfigError(f"config error: stages.{name}: reads {read.source}, which it writes itself")
                needs.append(writers[url])
            try:
                context = context_per_axis(read.context, len(run.voxel_size))
            except ValueError as error:
                raise ConfigError(f"config error: stages.{name}: reads {read_name}: {error}") from None
            task.resolved_reads[read_name] = (url, context)
        if not task.resolved_reads and not task.resolved_writes:
            raise ConfigError(f"config error: stages.{name}: the task neither reads nor writes a volume")
        task.needs = tuple(dict.fromkeys(needs))
    return _in_order(tasks)


def _source_url(run, source: str, writers: dict[str, str], key: str) -> str:
    config = run.config
    if source in INPUTS and getattr(config.input, source):
        return config.resolve(getattr(config.input, source))
    if run.dataset_url(source) in writers:
        return run.dataset_url(source)
    if "/" in source or "://" in source:
        from blockseg.volume import VolumeError, open_volume

        url = config.resolve(source)
        if url in writers:
            return url
        try:
            open_volume(url)
        except VolumeError as error:
            raise ConfigError(f"config error: {key}: reads {source}: {error}") from None
        return url
    raise ConfigError(
        f"config error: {key}: reads {source!r}, which is no input of the config and no stage of the run writes"
    )


def _in_order(tasks: dict[str, Task]) -> list[Task]:
    ordered: list[Task] = []
    placed: set[str] = set()
    pending = dict(tasks)
    while pending:
        ready = [name for name, task in pending.items() if all(n in placed or n not in tasks for n in task.needs)]
        if not ready:
            raise ConfigError(f"config error: stages: {', '.join(pending)} read each other's outputs in a circle")
        for name in ready:
            ordered.append(pending.pop(name))
            placed.add(name)
    return ordered
