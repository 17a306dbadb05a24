"""Reading pipeline spec files: YAML with line numbers, environment references, and every check at load.

Three passes over one file, each collecting every problem before the next starts:
1. YAML (a syntax error is the file's only problem) and `${VAR}` / `${VAR:-default}` references;
2. the shape, by the pydantic models of llm_assets/spec.py (unknown fields with a did-you-mean, types, ranges);
3. what the shape cannot say: profiles, prices and keys, files, placeholders, schemas, routes, gates.
Each problem is one line, `<file>:<line> <field path>: <what is wrong; what to set>`; the remedies name spec
fields (or an environment variable the spec references).

Environment references: a string value may hold `${VAR}` (the variable must be set) or `${VAR:-default}`;
`$${` writes a literal `${`. A value that is only a reference and expands to "" is null (e.g. an unset budget).
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dagster_shared.yaml_utils import parse_yamls_with_source_position
from dagster_shared.yaml_utils.source_position import SourcePositionTree
from pydantic import BaseModel, ValidationError

from llm_assets.spec import (
    RESERVED_STAGE_NAMES,
    TAXONOMY_MARKER,
    PipelineSpec,
    PipelineSpecError,
    ProviderProfile,
    ResolvedStage,
    StageSpec,
)
from llm_assets.spec_route import FieldType, RouteError, parse_route
from llm_assets.spec_template import placeholders, render
from resources.llm.normalize import check_rules
from resources.llm.prices import ModelPrice, PriceTable
from resources.llm.structured import check_schema

Path_ = tuple[str | int, ...]
_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SYSTEM_PLACEHOLDERS = ("taxonomy", "few_shot")


@dataclass(frozen=True)
class Problem:
    path: Path_
    message: str


def dotted(path: Path_) -> str:
    """`("stages", 1, "route")` -> `stages[1].route`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# ------------------------------------------------------------------------------------------------- entry points


def load_spec_file(
    path: Path, *, require_secrets: bool = True, overrides: dict[str, Any] | None = None
) -> PipelineSpec:
    spec, problems = _load(path, require_secrets=require_secrets, overrides=overrides)
    if problems:
        raise PipelineSpecError(problems)
    assert spec is not None
    return spec


def load_spec_folder(folder: Path, *, require_secrets: bool = True) -> list[PipelineSpec]:
    if not folder.is_dir():
        raise PipelineSpecError([f"{_shown(folder)}: no such folder of pipeline specs"])
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    specs: list[PipelineSpec] = []
    problems: list[str] = []
    first_file: dict[str, Path] = {}
    for file in files:
        spec, file_problems = _load(file, require_secrets=require_secrets)
        problems += file_problems
        if spec is None:
            continue
        if spec.name in first_file:
            problems.append(
                f"{_shown(file)} name: pipeline name {spec.name!r} is also used by {_shown(first_file[spec.name])}; "
                "each pipeline needs its own name (it is the asset key prefix)"
            )
            continue
        first_file[spec.name] = file
        specs.append(spec)
    if problems:
        raise PipelineSpecError(problems)
    return specs


def _load(
    path: Path, *, require_secrets: bool, overrides: dict[str, Any] | None = None
) -> tuple[PipelineSpec | None, list[str]]:
    shown = _shown(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{shown}: cannot read the spec ({exc})"]
    try:
        documents = parse_yamls_with_source_position(text, filename=shown)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        return None, [f"{shown}{line}: not valid YAML: {exc.problem or exc}"]
    except yaml.YAMLError as exc:
        return None, [f"{shown}: not valid YAML: {exc}"]
    if len(documents) != 1:
        found = "no YAML document" if not documents else f"{len(documents)} YAML documents"
        return None, [f"{shown}: a spec file holds one pipeline, as one YAML mapping; found {found}"]
    parsed = documents[0]
    tree = parsed.source_position_tree

    def lines(problems: list[Problem]) -> list[str]:
        return [_format(shown, tree, p) for p in problems]

    raw = parsed.value
    if not isinstance(raw, dict):
        return None, [f"{shown}: a pipeline spec is a YAML mapping (name:, input:, providers:, stages:, ...)"]
    env_problems: list[Problem] = []
    raw = _expand_env(raw, (), env_problems)
    if overrides:
        try:
            raw = apply_overrides(raw, overrides)
        except ValueError as exc:
            return None, [f"{shown}: {exc}"]
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        unset = {p.path for p in env_problems}  # an unset variable is the problem, not the empty value left
        shape = [p for p in _shape_problems(exc, raw) if p.path not in unset]
        return None, lines(env_problems + shape)
    if env_problems:
        return None, lines(env_problems)
    problems = _SpecChecker(spec, path.resolve().parent, require_secrets).check()
    if problems:
        return None, lines(problems)
    spec._source = path.resolve()
    return spec, []


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`raw` with `overrides` merged in: mappings merge key by key, other values replace. `stages` may be given
    as a mapping of stage name -> fields, merged into the stage of that name (ValueError for an unknown one);
    `providers` merge by profile name like any mapping. The result is validated like the file itself."""
    merged = dict(raw)
    for key, value in overrides.items():
        current = merged.get(key)
        if key == "stages" and isinstance(value, dict) and isinstance(current, list):
            names = [s.get("name") for s in current if isinstance(s, dict)]
            unknown = [name for name in value if name not in names]
            if unknown:
                raise ValueError(f"overrides name stages {unknown} the spec does not have (it has {names})")
            merged[key] = [
                apply_overrides(s, value[s.get("name")])
                if isinstance(s, dict) and s.get("name") in value
                else s
                for s in current
            ]
        elif isinstance(value, dict) and isinstance(current, dict):
            merged[key] = apply_overrides(current, value)
        else:
            merged[key] = value
    return merged


def read_profile(path: Path) -> dict[str, Any]:
    """A profile file: spec overrides (the same fields as a spec; `stages` as a mapping by name) that run a
    pipeline somewhere else, e.g. every stage against a local llama.cpp server (`make demo PROFILE=...`).
    `${VAR}` expands as in a spec; paths in it are read relative to the spec, not the profile. Raises
    PipelineSpecError naming the file and line."""
    shown = _shown(path)
    try:
        documents = parse_yamls_with_source_position(path.read_text(encoding="utf-8"), filename=shown)
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineSpecError([f"{shown}: cannot read the profile ({exc})"]) from None
    except yaml.YAMLError as exc:
        raise PipelineSpecError([f"{shown}: not valid YAML: {exc}"]) from None
    if len(documents) != 1 or not isinstance(documents[0].value, dict):
        raise PipelineSpecError(
            [f"{shown}: a profile is one YAML mapping of spec fields (providers:, stages:)"]
        )
    problems: list[Problem] = []
    overrides = _expand_env(documents[0].value, (), problems)
    if problems:
        tree = documents[0].source_position_tree
        raise PipelineSpecError([_format(shown, tree, p) for p in problems])
    return overrides


def _shown(path: Path) -> str:
    """The file as a person reads it: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _format(shown: str, tree: SourcePositionTree, problem: Problem) -> str:
    position, _ = tree.lookup_closest_and_path(list(problem.path), None)
    where = f"{shown}:{position.start.line}" if position is not None else shown
    return (
        f"{where} {dotted(problem.path)}: {problem.message}"
        if problem.path
        else f"{where}: {problem.message}"
    )


# ------------------------------------------------------------------------------------------------- pass 1: env


def _expand_env(value: Any, path: Path_, problems: list[Problem]) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, (*path, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*path, i), problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        current = os.environ.get(name)
        if current is not None:
            return current
        if default is not None:
            return default
        problems.append(
            Problem(
                path,
                f"environment variable {name} is not set and ${{{name}}} has no default; set it, or write "
                f"${{{name}:-<default>}}",
            )
        )
        return ""

    expanded = _ENV_REF.sub(replace, value)
    whole_reference = _ENV_REF.fullmatch(value.strip()) is not None and value.strip() != "$${"
    return None if whole_reference and expanded.strip() == "" else expanded


# ------------------------------------------------------------------------------------------------- pass 2: shape


def _shape_problems(exc: ValidationError, raw: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[Path_] = set()
    for error in exc.errors(include_url=False):
        path = _data_path(error["loc"], raw)
        if path in seen:  # a union reports each of its arms; one message per field is enough
            continue
        seen.add(path)
        problems.append(Problem(path, _shape_message(error, path)))
    return problems


def _data_path(loc: tuple[Any, ...], raw: Any) -> Path_:
    """The error's location in the data, without pydantic's union/validator segments (`str`, `list[str]`)."""
    path: list[str | int] = []
    current = raw
    for part in loc:
        if isinstance(current, list) and isinstance(part, int):
            path.append(part)
            current = current[part] if part < len(current) else None
        elif isinstance(current, dict) and isinstance(part, str) and (part in current or part == loc[-1]):
            path.append(part)
            current = current.get(part)
        elif not isinstance(current, dict | list):
            break
    return tuple(path)


def _shape_message(error: dict[str, Any], path: Path_) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        name = str(path[-1]) if path else "?"
        known = _fields_at(path[:-1])
        guess = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = (
            f" (did you mean '{guess[0]}'?)"
            if guess
            else (f" (fields here: {', '.join(known)})" if known else "")
        )
        return f"unknown field '{name}'{hint}"
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        return f"{_short(error.get('input'))} does not match the expected form {_pattern_help(path)}"
    return f"{message} (got {_short(error.get('input'))})"


def _pattern_help(path: Path_) -> str:
    last = next((p for p in reversed(path) if isinstance(p, str)), "")
    if last in ("name",):
        return "(a slug: lowercase letters, digits and _, starting with a letter)"
    if last.endswith("_env"):
        return "(the NAME of an environment variable, e.g. MY_PROVIDER_API_KEY)"
    if last == "owners" or (len(path) >= 2 and path[-2] == "owners"):
        return "(`team:name` or an email address)"
    if last == "schema_name":
        return "(letters, digits, _ and -, at most 64)"
    return ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields_at(path: Path_) -> list[str]:
    """Field names of the spec model found at `path` (for did-you-mean)."""
    model: Any = PipelineSpec
    for part in path:
        model = _unwrap(model)
        if isinstance(model, type) and issubclass(model, BaseModel):
            if not isinstance(part, str) or part not in model.model_fields:
                return []
            model = model.model_fields[part].annotation
        else:
            args = typing.get_args(model)
            if not args:
                return []
            model = args[-1]  # list[X] -> X, dict[str, X] -> X
    model = _unwrap(model)
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        arms = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(arms[0]) if len(arms) == 1 else annotation
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    return annotation


# ------------------------------------------------------------------------------------------------- pass 3: meaning


class _SpecChecker:
    """Checks what the models cannot: references between fields, files, prices, keys, schemas and routes.
    On success it fills each stage's `_resolved` and turns file fields into absolute paths."""

    def __init__(self, spec: PipelineSpec, base_dir: Path, require_secrets: bool) -> None:
        self.spec = spec
        self.base = base_dir
        self.require_secrets = require_secrets
        self.problems: list[Problem] = []
        self.price_tables: dict[str, dict[str, ModelPrice] | None] = {}
        self.columns = self._input_columns()
        self.schemas: dict[str, dict[str, Any]] = {}  # stage name -> resolved schema (valid ones only)

    def problem(self, path: Path_, message: str) -> None:
        self.problems.append(Problem(path, message))

    def check(self) -> list[Problem]:
        spec = self.spec
        self._check_input()
        used_profiles: dict[str, Path_] = {}
        seen: dict[str, int] = {}
        resolved: list[ResolvedStage | None] = []
        for i, stage in enumerate(spec.stages):
            at: Path_ = ("stages", i)
            if stage.name in seen:
                self.problem(
                    (*at, "name"),
                    f"stage name {stage.name!r} is also used by stages[{seen[stage.name]}]; give each stage "
                    "its own name",
                )
            elif stage.name in RESERVED_STAGE_NAMES:
                self.problem(
                    (*at, "name"),
                    f"{stage.name!r} is the name of an asset every pipeline has "
                    f"({', '.join(RESERVED_STAGE_NAMES)}); choose another stage name",
                )
            seen.setdefault(stage.name, i)
            resolved.append(self._check_stage(i, stage, used_profiles))
        for name, at in used_profiles.items():
            self._check_profile(name, at)
        if self.problems:
            return self.problems
        for stage, done in zip(spec.stages, resolved, strict=True):
            assert done is not None
            stage._resolved = done
        self._absolute_paths()
        return []

    # -- input ---------------------------------------------------------------------------------------------
    def _input_columns(self) -> dict[str, FieldType]:
        """Names prompts and routes may use for input columns, with what is known of their type."""
        spec_input = self.spec.input
        columns = spec_input.columns
        names: dict[str, FieldType] = {"text": FieldType("string"), "id": FieldType("string")}
        if columns.team or spec_input.team_from_label:
            names["team"] = FieldType("string")
        if columns.label:
            names["label"] = FieldType("string")
        typed = {columns.id: "string", columns.team: "string", columns.label: "string"}
        for source in [columns.id, columns.team, columns.label, *columns.text, *columns.passthrough]:
            if source:
                names.setdefault(source, FieldType(typed.get(source)))
        return names

    def _check_input(self) -> None:
        spec_input = self.spec.input
        if spec_input.team_from_label:
            at: Path_ = ("input", "team_from_label")
            if spec_input.columns.label is None:
                self.problem(
                    at,
                    "derives the team from the gold label, but input.columns.label is not set; set "
                    "input.columns.label, or use input.columns.team",
                )
            path = self._existing_file(at, spec_input.team_from_label, "team rule file")
            if path is not None:
                from llm_assets.datasets import load_team_rules

                try:
                    load_team_rules(path)
                except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                    self.problem(
                        at,
                        f"{path.name} is not a team rule file ({type(exc).__name__}: {exc}); it needs a "
                        '"prefix_to_team" mapping and may have a "default_team"',
                    )
        if spec_input.demo_data:
            self._existing_file(("input", "demo_data"), spec_input.demo_data, "dataset file")
        columns = spec_input.columns
        named = [c for c in (columns.id, *columns.text, columns.team, columns.label) if c]
        for i, column in enumerate(columns.passthrough):
            if column in named:
                self.problem(
                    ("input", "columns", "passthrough", i),
                    f"column {column!r} is already mapped; list only other columns in passthrough",
                )

    def _existing_file(self, at: Path_, value: str, what: str) -> Path | None:
        path = self._path(value)
        if not path.is_file():
            looked = (
                ""
                if Path(value).is_absolute()
                else f" (looked for {path}; paths are relative to the spec file)"
            )
            self.problem(at, f"{what} {value!r} not found{looked}")
            return None
        return path

    def _path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base / path)

    # -- stages --------------------------------------------------------------------------------------------
    def _check_stage(self, i: int, stage: StageSpec, used_profiles: dict[str, Path_]) -> ResolvedStage | None:
        at: Path_ = ("stages", i)
        start = len(self.problems)
        profile = self._profile_for((*at, "provider"), stage.provider, used_profiles)
        if profile is not None:
            self._check_price((*at, "model"), stage.model, stage.provider, profile)
        taxonomy = self._taxonomy((*at, "taxonomy"), stage.taxonomy)
        few_shot = self._few_shot((*at, "few_shot"), stage.few_shot, taxonomy, stage.taxonomy)
        system_prompt = self._system_prompt(
            (*at, "system_prompt"), stage.system_prompt, stage, taxonomy, few_shot
        )
        schema = self._schema((*at, "output_schema"), stage, taxonomy, profile)
        if schema is not None:
            self.schemas.setdefault(
                stage.name, schema
            )  # a repeated name is reported; later refs mean the first
        self._check_user_template((*at, "user_template"), stage.user_template, i, allow_stages=True)
        route = self._route((*at, "route"), stage.route, i)
        self._check_normalize((*at, "normalize"), stage, schema)
        judge_prompt, judge_schema = self._check_gates(
            (*at, "gates"), stage, schema, taxonomy, few_shot, used_profiles
        )
        self._check_candidates(at, stage, schema, used_profiles)
        if len(self.problems) > start or profile is None or schema is None or route is None:
            return None
        assert system_prompt is not None
        return ResolvedStage(
            system_prompt=system_prompt,
            schema=schema,
            route=route,
            profile=profile,
            taxonomy=taxonomy,
            few_shot=few_shot or [],
            judge_system_prompt=judge_prompt,
            judge_schema=judge_schema,
        )

    def _check_normalize(self, at: Path_, stage: StageSpec, schema: dict[str, Any] | None) -> None:
        if not stage.normalize or schema is None:
            return
        if stage.mode == "batch":
            self.problem(
                at, "normalize applies to online stages only; remove it or set the stage's mode: online"
            )
            return
        try:
            check_rules(dict(stage.normalize), schema)
        except ValueError as exc:
            self.problem(at, str(exc))

    def _profile_for(self, at: Path_, name: str, used: dict[str, Path_]) -> ProviderProfile | None:
        profiles = self.spec.providers
        if name not in profiles:
            guess = difflib.get_close_matches(name, list(profiles), n=1, cutoff=0.6)
            hint = f"did you mean '{guess[0]}'? " if guess else ""
            self.problem(
                at,
                f"no provider profile {name!r} ({hint}profiles: {', '.join(profiles)}); add it under providers "
                "or name one of those",
            )
            return None
        used.setdefault(name, at)
        return profiles[name]

    def _check_profile(self, name: str, used_at: Path_) -> None:
        profile = self.spec.providers[name]
        at: Path_ = ("providers", name)
        if profile.provider == "anthropic" and profile.structured_output == "json_object":
            self.problem(
                (*at, "structured_output"),
                "json_object is an OpenAI-compatible setting; use json_schema or prompt for provider anthropic",
            )
        if profile.provider == "anthropic" and profile.dialect is not None:
            self.problem(
                (*at, "dialect"),
                "dialect applies to OpenAI-compatible servers (provider openai); remove it for provider anthropic",
            )
        if self.require_secrets and not os.environ.get(profile.api_key_env):
            self.problem(
                (*at, "api_key_env"),
                f"environment variable {profile.api_key_env} (the API key, used by {dotted(used_at)}) is not set; "
                "export the key under that name, or set api_key_env to the variable that holds it",
            )

    def _prices(self, profile_name: str, profile: ProviderProfile) -> dict[str, ModelPrice] | None:
        if profile_name not in self.price_tables:
            rows: dict[str, ModelPrice] | None
            try:
                price_file = str(self._path(profile.price_file)) if profile.price_file else None
                if price_file and not Path(price_file).is_file():
                    raise ValueError(f"price file {profile.price_file!r} not found (looked for {price_file})")
                rows = dict(PriceTable(price_file).rows)
            except ValueError as exc:
                self.problem(
                    ("providers", profile_name, "price_file"), f"{exc}; paths are relative to the spec file"
                )
                rows = None
            if rows is not None:
                for row in profile.prices:
                    rows[row.model] = ModelPrice(
                        provider=row.provider or profile.provider,
                        model=row.model,
                        input=row.input,
                        cached_input=row.input if row.cached_input is None else row.cached_input,
                        cache_write=row.input if row.cache_write is None else row.cache_write,
                        output=row.output,
                        batch_multiplier=row.batch_multiplier,
                        as_of=row.as_of,
                        source=row.source,
                    )
            self.price_tables[profile_name] = rows
        return self.price_tables[profile_name]

    def _check_price(self, at: Path_, model: str, profile_name: str, profile: ProviderProfile) -> None:
        rows = self._prices(profile_name, profile)
        if rows is None or model in rows or profile.allow_unpriced:
            return
        guess = difflib.get_close_matches(model, list(rows), n=1, cutoff=0.6)
        hint = f" (did you mean '{guess[0]}'?)" if guess else f" (priced: {', '.join(sorted(rows))})"
        self.problem(
            at,
            f"no price for model {model!r}{hint}; add a row to providers.{profile_name}.prices or "
            f"providers.{profile_name}.price_file, or set providers.{profile_name}.allow_unpriced: true "
            "for a model you do not pay for",
        )

    def _taxonomy(self, at: Path_, value: str | None) -> list[str] | None:
        if value is None:
            return None
        path = self._existing_file(at, value, "taxonomy file")
        if path is None:
            return None
        try:
            labels = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.problem(at, f"{path.name} is not readable JSON ({exc})")
            return None
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
            self.problem(at, f"{path.name} must hold a non-empty JSON list of label strings")
            return None
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            self.problem(at, f"{path.name} repeats labels {repeated}; list each label once")
            return None
        return labels

    def _few_shot(
        self, at: Path_, value: str | None, taxonomy: list[str] | None, taxonomy_value: str | None
    ) -> list[tuple[str, str]] | None:
        if value is None:
            return []
        path = self._existing_file(at, value, "few-shot file")
        if path is None:
            return None
        examples: list[tuple[str, str]] = []
        try:
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                missing = {"text", "label"} - set(reader.fieldnames or [])
                if missing:
                    self.problem(
                        at,
                        f"{path.name} needs the columns text,label (missing: {', '.join(sorted(missing))})",
                    )
                    return None
                allowed = set(taxonomy) if taxonomy is not None else None
                for line_no, row in enumerate(reader, start=2):
                    label = row.get("label") or ""
                    if allowed is not None and label not in allowed:
                        self.problem(
                            at,
                            f"{path.name} line {line_no}: label {label!r} is not in the taxonomy "
                            f"{taxonomy_value}; fix the example or add the label to the taxonomy",
                        )
                        return None
                    examples.append((" ".join((row.get("text") or "").split()), label))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            self.problem(at, f"{path.name} is not a readable CSV ({exc})")
            return None
        return examples

    def _system_prompt(
        self,
        at: Path_,
        template: str,
        stage: StageSpec,
        taxonomy: list[str] | None,
        few_shot: list[tuple[str, str]] | None,
    ) -> str | None:
        ok = True
        for name in placeholders(template):
            if name == "taxonomy" and stage.taxonomy is None:
                self.problem(
                    at, "uses {taxonomy} but the stage has no taxonomy; set the stage's taxonomy file"
                )
                ok = False
            elif name == "few_shot" and stage.few_shot is None:
                self.problem(
                    at, "uses {few_shot} but the stage has no few_shot file; set the stage's few_shot"
                )
                ok = False
            elif name not in _SYSTEM_PLACEHOLDERS:
                self.problem(
                    at,
                    f"{{{name}}} differs per item, and the system prompt is the same for every item (the provider "
                    "caches it); move it to user_template, or write {{" + name + "}} for a literal",
                )
                ok = False
        if not ok or (stage.taxonomy is not None and taxonomy is None) or few_shot is None:
            return None
        values = {
            "taxonomy": "\n".join(f"- {label}" for label in taxonomy or []),
            "few_shot": "\n".join(f"{text} => {label}" for text, label in few_shot),
        }
        return render(template, values)

    def _check_user_template(self, at: Path_, template: str, stage_index: int, *, allow_stages: bool) -> None:
        for name in placeholders(template):
            if name in _SYSTEM_PLACEHOLDERS:
                self.problem(at, f"{{{name}}} is the same for every item: put it in the system prompt")
            elif "." in name:
                if not allow_stages:
                    self.problem(at, f"{{{name}}}: only input columns may be used here")
                    continue
                try:
                    self._stage_field(name, stage_index)
                except RouteError as exc:
                    self.problem(at, f"{{{name}}}: {exc}")
            elif name not in self.columns:
                self.problem(at, f"{{{name}}}: {self._unknown_column(name)}")

    def _unknown_column(self, name: str) -> str:
        guess = difflib.get_close_matches(name, list(self.columns), n=1, cutoff=0.6)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        return (
            f"no input column or earlier stage field named {name!r}{hint}; input columns here are "
            f"{', '.join(self.columns)} (map more under input.columns, e.g. passthrough), stage fields are "
            "written {stage.field}"
        )

    def _stage_field(self, name: str, stage_index: int) -> FieldType:
        """The type of `stage.field` as seen from stage `stage_index`; RouteError says why it may not be used."""
        stage_name, field_name = name.split(".", 1)
        order = [s.name for s in self.spec.stages]
        here = order[stage_index]
        if stage_name not in order:
            guess = difflib.get_close_matches(stage_name, order[:stage_index], n=1, cutoff=0.6)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            earlier = ", ".join(order[:stage_index]) or "none"
            raise RouteError(f"unknown stage {stage_name!r}{hint}; earlier stages: {earlier}")
        position = order.index(stage_name)
        if position == stage_index:
            raise RouteError(f"stage {here!r} cannot use its own output; name an earlier stage")
        if position > stage_index:
            raise RouteError(
                f"stage {stage_name!r} runs after {here!r} (stages run in the order listed); move it before "
                f"{here!r} or name an earlier stage"
            )
        schema = self.schemas.get(stage_name)
        if schema is None:  # the earlier stage's schema has its own problem, reported there
            return FieldType(None)
        properties = schema.get("properties", {})
        if field_name not in properties:
            guess = difflib.get_close_matches(field_name, list(properties), n=1, cutoff=0.6)
            hint = f" (did you mean '{guess[0]}'?)" if guess else f" (fields: {', '.join(properties)})"
            raise RouteError(f"unknown field {field_name!r} of stage {stage_name!r}{hint}")
        return _field_type(properties[field_name])

    def _route(self, at: Path_, text: str, stage_index: int) -> Any:
        def resolve(name: str) -> FieldType:
            if "." in name:
                return self._stage_field(name, stage_index)
            if name not in self.columns:
                raise RouteError(self._unknown_column(name))
            return self.columns[name]

        try:
            return parse_route(text, resolve)
        except RouteError as exc:
            self.problem(at, str(exc))
            return None

    def _schema(
        self, at: Path_, stage: StageSpec, taxonomy: list[str] | None, profile: ProviderProfile | None
    ) -> dict[str, Any] | None:
        schema = stage.output_schema
        if _uses_marker(schema):
            if stage.taxonomy is None:
                self.problem(
                    at,
                    f'uses "enum": "{TAXONOMY_MARKER}" but the stage has no taxonomy; set the stage\'s taxonomy',
                )
                return None
            if taxonomy is None:
                return None  # the taxonomy file's own problem is reported
            schema = _fill_marker(schema, taxonomy)
        problems = check_schema(schema)
        for message in problems:
            self.problem(at, message)
        if problems:
            return None
        properties = schema.get("properties")
        if not isinstance(properties, dict) or not properties:
            self.problem(
                at, "$.properties: the reply needs at least one top-level property (they become columns)"
            )
            return None
        if (
            profile is not None
            and profile.provider == "openai"
            and _structured_output(profile) == "json_schema"
        ):
            for where, message in _strict_mode_problems(schema, "$"):
                self.problem(
                    at,
                    f"{where}: {message} (OpenAI strict structured outputs); add it, or set "
                    f"providers.{stage.provider}.structured_output: json_object",
                )
        return schema

    def _check_gates(
        self,
        at: Path_,
        stage: StageSpec,
        schema: dict[str, Any] | None,
        taxonomy: list[str] | None,
        few_shot: list[tuple[str, str]] | None,
        used_profiles: dict[str, Path_],
    ) -> tuple[str | None, dict[str, Any] | None]:
        gates = stage.gates
        properties = (schema or {}).get("properties", {})
        drift = gates.label_drift
        if drift is not None and schema is not None:
            self._gate_field((*at, "label_drift", "field"), drift.field, properties, stage.name, scalar=True)
        quality = gates.sampled_quality
        if quality is None:
            return None, None
        q_at: Path_ = (*at, "sampled_quality")
        if schema is not None:
            self._gate_field((*q_at, "field"), quality.field, properties, stage.name, scalar=True)
        if quality.gold_column is not None and quality.gold_column not in self.columns:
            self.problem((*q_at, "gold_column"), self._unknown_column(quality.gold_column))
        if quality.gold_column is None and quality.judge is None:
            self.problem(q_at, "scores nothing: set gold_column (an input column) or a judge")
        judge = quality.judge
        if judge is None:
            return None, None
        j_at: Path_ = (*q_at, "judge")
        profile = self._profile_for((*j_at, "provider"), judge.provider, used_profiles)
        if profile is not None:
            self._check_price((*j_at, "model"), judge.model, judge.provider, profile)
        rubric = self._system_prompt((*j_at, "rubric"), judge.rubric, stage, taxonomy, few_shot)
        self._check_user_template((*j_at, "user_template"), judge.user_template, 0, allow_stages=False)
        if quality.field not in properties:
            return rubric, None
        answer = judge.answer_field or quality.field
        judge_schema = {
            "type": "object",
            "properties": {answer: properties[quality.field]},
            "required": [answer],
            "additionalProperties": False,
        }
        return rubric, judge_schema

    def _check_candidates(
        self, at: Path_, stage: StageSpec, schema: dict[str, Any] | None, used_profiles: dict[str, Path_]
    ) -> None:
        """A model trial's candidates (llm_assets/trials.py): known profiles, priced models, something to score
        them by, and a user template a trial can fill from the input alone."""
        if not stage.candidates:
            return
        seen: dict[tuple[str, str], int] = {}
        for j, candidate in enumerate(stage.candidates):
            c_at: Path_ = (*at, "candidates", j)
            name = candidate.provider or stage.provider
            profile = self._profile_for((*c_at, "provider"), name, used_profiles)
            if profile is not None:
                self._check_price((*c_at, "model"), candidate.model, name, profile)
            if (name, candidate.model) in seen:
                self.problem(
                    c_at,
                    f"model {candidate.model!r} on profile {name!r} is already candidates[{seen[name, candidate.model]}]; "
                    "list each candidate once",
                )
            seen.setdefault((name, candidate.model), j)
        # No gates.sampled_quality: the trial refuses (llm_assets/trials.py); the pipeline itself still loads, so a
        # test or profile that drops the gate keeps its runs. No gold_column and no judge: _check_gates reports
        # "scores nothing".
        earlier = [p for p in placeholders(stage.user_template) if "." in p]
        if earlier:
            self.problem(
                (*at, "candidates"),
                f"a model trial fills the user template from the input alone, but it reads {', '.join(earlier)}; "
                "list candidates on a stage whose user template uses input columns only",
            )
        confidence = stage.trial.confidence_field
        properties = (schema or {}).get("properties", {})
        kind = _field_type(properties[confidence]).json_type if confidence in properties else "number"
        if kind not in ("number", "integer"):
            self.problem(
                (*at, "trial", "confidence_field"),
                f"{confidence!r} is not a number field of stage {stage.name!r}; name the confidence field",
            )

    def _gate_field(
        self, at: Path_, name: str, properties: dict[str, Any], stage_name: str, *, scalar: bool
    ) -> None:
        if name not in properties:
            guess = difflib.get_close_matches(name, list(properties), n=1, cutoff=0.6)
            hint = f" (did you mean '{guess[0]}'?)" if guess else f" (fields: {', '.join(properties)})"
            self.problem(at, f"unknown field {name!r} of stage {stage_name!r}{hint}")
        elif scalar and _field_type(properties[name]).json_type in ("array", "object"):
            self.problem(at, f"{name!r} is not a single value; name a string, enum or number field")

    # -- after every check passed --------------------------------------------------------------------------
    def _absolute_paths(self) -> None:
        spec = self.spec
        for holder, attr in [
            (spec.input, "team_from_label"),
            (spec.input, "demo_data"),
            *((stage, "taxonomy") for stage in spec.stages),
            *((stage, "few_shot") for stage in spec.stages),
            *((profile, "price_file") for profile in spec.providers.values()),
        ]:
            value = getattr(holder, attr)
            if value:
                setattr(holder, attr, str(self._path(value).resolve()))
        if spec.input.watch and "://" not in spec.input.watch:
            spec.input.watch = str(self._path(spec.input.watch).resolve())


# ------------------------------------------------------------------------------------------------- schema helpers


def _uses_marker(value: Any) -> bool:
    if isinstance(value, dict):
        return value.get("enum") == TAXONOMY_MARKER or any(_uses_marker(v) for v in value.values())
    if isinstance(value, list):
        return any(_uses_marker(v) for v in value)
    return False


def _fill_marker(value: Any, taxonomy: list[str]) -> Any:
    if isinstance(value, dict):
        return {
            k: (list(taxonomy) if k == "enum" and v == TAXONOMY_MARKER else _fill_marker(v, taxonomy))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_fill_marker(v, taxonomy) for v in value]
    return value


def _field_type(schema: Any) -> FieldType:
    if not isinstance(schema, dict):
        return FieldType(None)
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    enum = schema.get("enum")
    if kind is None and isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
        kind = "string"
    return FieldType(kind if isinstance(kind, str) else None, tuple(enum) if isinstance(enum, list) else None)


def _strict_mode_problems(schema: Any, where: str) -> Iterator[tuple[str, str]]:
    """What OpenAI's strict mode rejects: an object without `additionalProperties: false`, or with a property
    missing from `required`."""
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            yield where, "an object needs additionalProperties: false"
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        missing = [name for name in properties if name not in required]
        if missing:
            yield where, f"every property must be required (missing from required: {', '.join(missing)})"
        for name, sub in properties.items():
            yield from _strict_mode_problems(sub, f"{where}.properties.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _strict_mode_problems(schema["items"], f"{where}.items")
    for key in ("anyOf", "$defs"):
        subs = schema.get(key)
        if isinstance(subs, list):
            for n, sub in enumerate(subs):
                yield from _strict_mode_problems(sub, f"{where}.{key}[{n}]")
        elif isinstance(subs, dict):
            for name, sub in subs.items():
                yield from _strict_mode_problems(sub, f"{where}.{key}.{name}")


def _structured_output(profile: Any) -> str:
    """The mode a profile uses: its own, else its dialect's."""
    from resources.llm.providers.dialects import DIALECTS

    return profile.structured_output or DIALECTS[profile.dialect or "openai"].structured_output
