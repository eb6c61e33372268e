"""``blockseg tasks``: the built-in stages and the installed tasks, with their parameters and defaults."""

from __future__ import annotations

from blockseg.errors import ConfigError
from blockseg.registry import STAGE_ORDER
from blockseg.stage_config import FROM_THE_DATA, StagesConfig
from blockseg.user_tasks import ENTRY_POINT_GROUP, installed_tasks, load_task_class


def _parameters(model) -> list[str]:
    lines = []
    for key, field in model.model_fields.items():
        if key == "base_dir":
            continue
        default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
        if default == "default None" and FROM_THE_DATA in (field.description or ""):
            default = "default from the data"  # blockseg/data_defaults.py fills it when the run opens
        note = f"  ({field.description})" if field.description else ""
        lines.append(f"    {key}: {default}{note}")
    return lines or ["    (no parameters)"]


def describe_tasks() -> str:
    """What ``blockseg tasks`` prints: the built-in stages and the installed tasks, with parameters and defaults."""
    lines = ["built-in stages (stages.<name> in the YAML):"]
    for name in STAGE_ORDER:
        annotation = StagesConfig.model_fields[name].annotation if name in StagesConfig.model_fields else None
        model = next((a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)), None)
        lines.append(f"  {name}")
        if model is not None and model is not type(None):
            lines += _parameters(model)
        else:
            lines.append("    (no parameters)")
    installed = installed_tasks()
    lines.append(f"installed tasks (entry-point group {ENTRY_POINT_GROUP}; stages.<name>: {{task: <task>, ...}}):")
    if not installed:
        lines.append("  none")
    for name, entry in sorted(installed.items()):
        try:
            cls = load_task_class(name, name)
        except ConfigError as error:
            lines.append(f"  {name}  ({entry.value}): cannot load: {str(error).removeprefix('config error: ')}")
            continue
        summary = (cls.__doc__ or "").strip().splitlines()
        lines.append(f"  {name}  ({entry.value})" + (f": {summary[0]}" if summary else ""))
        lines += _parameters(cls.Params)
    lines.append("your own: stages.<name>: {task: python:package.module:Class, ...} (see README, 'Your own tasks')")
    return "\n".join(lines)
