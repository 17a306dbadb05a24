"""Per-field normalisation of a reply before it is validated: what a grammar cannot enforce.

A server's grammar built from the schema keeps a reply's shape, not every keyword: a small model asked for a
confidence in [0, 1] answers 85. `run_prompts(normalize={"$.confidence": "percent_to_unit"})` turns 85 into 0.85
before validation; `"clamp"` moves a number into the schema's `minimum`/`maximum`. Every change is returned as one
line ("$.confidence: 85 -> 0.85 (percent_to_unit)") that the engine puts into `ItemResult.normalized`, so nothing
is changed silently. A value a rule does not apply to (not a number, or already in range) is left as it is, and
validation judges it.

Paths: `$` then `.name` and `[*]` (every element of an array), e.g. `$.confidence`, `$.entities[*].score`.
"""

from __future__ import annotations

import re
from typing import Any

NORMALIZERS = ("clamp", "percent_to_unit")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[\*\]")


def parse_path(path: str) -> list[str | None]:
    """`$.a[*].b` -> ["a", None, "b"] (None: every array element); ValueError for anything else."""
    if not isinstance(path, str) or not path.startswith("$"):
        raise ValueError(f"normalize path {path!r} must start with '$' (e.g. '$.confidence')")
    steps: list[str | None] = []
    pos = 1
    while pos < len(path):
        match = _STEP.match(path, pos)
        if match is None:
            raise ValueError(
                f"normalize path {path!r}: cannot read {path[pos:]!r}; use '.name' and '[*]' steps"
            )
        steps.append(match.group(1))
        pos = match.end()
    if not steps:
        raise ValueError(f"normalize path {path!r} names no field; e.g. '$.confidence'")
    return steps


def check_rules(
    rules: dict[str, str] | None, schema: dict | None
) -> dict[str, tuple[list[str | None], str, dict]]:
    """Validate `rules` against the output schema once, before anything is sent: known modes, readable paths,
    and for `clamp` a `minimum` or `maximum` at the path. Returns path -> (steps, mode, the field's schema)."""
    if not rules:
        return {}
    if schema is None:
        raise ValueError("normalize needs an output schema (schema=None gives free text)")
    checked: dict[str, tuple[list[str | None], str, dict]] = {}
    for path, mode in rules.items():
        if mode not in NORMALIZERS:
            raise ValueError(f"normalize[{path!r}] = {mode!r}; use one of {', '.join(NORMALIZERS)}")
        steps = parse_path(path)
        field = _subschema(schema, steps)
        if field is None:
            raise ValueError(f"normalize path {path!r} is not a field of the output schema")
        if mode == "clamp" and "minimum" not in field and "maximum" not in field:
            raise ValueError(
                f"normalize[{path!r}] = 'clamp' needs a minimum or maximum in the schema at that path"
            )
        checked[path] = (steps, mode, field)
    return checked


def apply_rules(value: dict[str, Any], rules: dict[str, tuple[list[str | None], str, dict]]) -> list[str]:
    """Apply the checked rules to `value` in place; one line per changed value."""
    notes: list[str] = []
    for steps, mode, field in rules.values():
        for where, parent, key in _locate(value, steps, "$"):
            old = parent[key]
            if isinstance(old, bool) or not isinstance(old, int | float):
                continue
            new = _percent_to_unit(old) if mode == "percent_to_unit" else _clamp(old, field)
            if new != old:
                parent[key] = new
                notes.append(f"{where}: {old!r} -> {new!r} ({mode})")
    return notes


def _percent_to_unit(number: float) -> float:
    # (1, 100] is a percentage; [0, 1] is already a fraction (1 stays 1.0: it is in range either way).
    return round(number / 100.0, 10) if 1 < number <= 100 else number


def _clamp(number: float, field: dict) -> float:
    low, high = field.get("minimum"), field.get("maximum")
    if isinstance(low, int | float) and number < low:
        return low
    if isinstance(high, int | float) and number > high:
        return high
    return number


def _subschema(schema: dict, steps: list[str | None]) -> dict | None:
    node: Any = schema
    for step in steps:
        if not isinstance(node, dict):
            return None
        node = (node.get("properties") or {}).get(step) if step is not None else node.get("items")
    return node if isinstance(node, dict) else None


def _locate(node: Any, steps: list[str | None], where: str):
    """(concrete path, container, key) of every value the steps reach."""
    step, rest = steps[0], steps[1:]
    if step is None:
        if not isinstance(node, list):
            return
        children = [(f"{where}[{i}]", i) for i in range(len(node))]
    else:
        if not isinstance(node, dict) or step not in node:
            return
        children = [(f"{where}.{step}", step)]
    for child_where, key in children:
        if rest:
            yield from _locate(node[key], rest, child_where)
        else:
            yield child_where, node, key
