"""Placeholders in a pipeline spec's prompts: `{column}`, `{stage.field}`, `{taxonomy}`, `{few_shot}`.

A placeholder is a name in single braces (`{text}`, `{sentiment.score}`); `{{name}}` writes a literal `{name}`.
Every other brace is plain text, so JSON examples in a prompt need no escaping.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?"
_PLACEHOLDER = re.compile(r"\{\{(" + _NAME + r")\}\}|\{(" + _NAME + r")\}")


def placeholders(template: str) -> list[str]:
    """The placeholder names of `template`, in order, each once (escaped `{{name}}` is not one)."""
    found = [m.group(2) for m in _PLACEHOLDER.finditer(template) if m.group(2) is not None]
    return list(dict.fromkeys(found))


def render(template: str, values: Mapping[str, Any]) -> str:
    """`template` with each placeholder replaced by its value as text: None/NaN as "", lists and mappings as
    JSON, everything else by `str`. Raises KeyError naming a placeholder `values` lacks."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return "{" + match.group(1) + "}"
        name = match.group(2)
        if name not in values:
            raise KeyError(f"no value for placeholder {{{name}}}")
        return as_text(values[name])

    return _PLACEHOLDER.sub(replace, template)


def as_text(value: Any) -> str:
    """How a value reads inside a prompt."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays, as pandas and Parquet hand them over
        value = value.tolist()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=isinstance(value, dict))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
