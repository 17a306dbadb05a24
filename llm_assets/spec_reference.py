"""The reference part of docs/pipeline-spec.md, generated from the spec models (llm_assets/spec.py).

`python -m scripts.spec_reference` rewrites everything below MARKER in the doc; the text above it is written by
hand. tests/llm_assets/test_spec.py fails when the file differs from what this module generates.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from llm_assets.spec import PipelineSpec

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "pipeline-spec.md"
MARKER = (
    "<!-- Generated from llm_assets/spec.py by `python -m scripts.spec_reference`; do not edit below. -->"
)


def reference_markdown() -> str:
    """Every model of the spec as a section: each field with its type, default and description."""
    sections: list[str] = []
    queue: list[tuple[str, type[BaseModel]]] = [("", PipelineSpec)]
    anchors = {PipelineSpec: "pipeline"}
    while queue:
        path, model = queue.pop(0)
        title = path or "pipeline (top level)"
        rows = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
        for name, info in model.model_fields.items():
            child_path = f"{path}.{name}" if path else name
            nested = _nested_model(info.annotation)
            if nested is not None:
                collection = _collection_suffix(info.annotation)
                section = child_path + collection
                if nested not in anchors:
                    anchors[nested] = _anchor(section)
                    queue.append((section, nested))
            rows.append(
                f"| `{name}` | {_type_text(info, anchors)} | {_default_text(info)} | {_cell(info.description or '')} |"
            )
        doc = " ".join((model.__doc__ or "").split())
        sections.append(f'### <a id="{anchors[model]}"></a>`{title}`\n\n{doc}\n\n' + "\n".join(rows))
    return "## Reference\n\n" + "\n\n".join(sections) + "\n"


def render_doc(current: str) -> str:
    """`current` (the doc's text) with everything after MARKER replaced by the generated reference."""
    head = current.split(MARKER, 1)[0].rstrip("\n") if MARKER in current else current.rstrip("\n")
    return f"{head}\n\n{MARKER}\n\n{reference_markdown()}"


# ------------------------------------------------------------------------------------------------- rendering


def _anchor(path: str) -> str:
    return path.replace("[]", "").replace("<name>", "name").replace(".", "-").replace("_", "-")


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    annotation = _strip(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _collection_suffix(annotation: Any) -> str:
    origin = typing.get_origin(_strip(annotation))
    if origin is list:
        return "[]"
    if origin is dict:
        return ".<name>"
    return ""


def _strip(annotation: Any) -> Any:
    """Drop `None` from an optional and the metadata of Annotated."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _strip(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        arms = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(arms) == 1:
            return _strip(arms[0])
    return annotation


def _type_text(info: FieldInfo, anchors: dict[type, str]) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    text = str(extra["doc_type"]) if "doc_type" in extra else _annotation_text(info.annotation, anchors)
    bounds = _bounds(info.metadata)
    return text + (f" ({bounds})" if bounds else "")


def _annotation_text(annotation: Any, anchors: dict[type, str]) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        inner = _annotation_text(args[0], anchors)
        bounds = _bounds(list(args[1:]))
        return inner + (f" ({bounds})" if bounds else "")
    if origin is typing.Union or origin is types.UnionType:
        arms = [a for a in args if a is not type(None)]
        text = " or ".join(_annotation_text(a, anchors) for a in arms)
        return f"{text} or null" if len(arms) < len(args) else text
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_annotation_text(args[0], anchors)}"
    if origin is dict:
        return f"mapping of name to {_annotation_text(args[1], anchors)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{anchors[annotation]})"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Any: "any"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(metadata: list[Any]) -> str:
    parts: list[str] = []
    for item in metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None and isinstance(item, annotated_types.BaseMetadata):
                parts.append(f"{symbol} {value}")
        if isinstance(item, annotated_types.MinLen) and item.min_length:
            parts.append(f"at least {item.min_length}")
    return ", ".join(parts)


def _default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        return "see section" if isinstance(value, BaseModel) else f"`{json.dumps(value)}`"
    if info.default is PydanticUndefined:
        return "**required**"
    return f"`{json.dumps(info.default)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
