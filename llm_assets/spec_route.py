"""The routing language of pipeline specs: which rows a stage sees, as a condition on earlier stages' outputs.

    route: classified.confidence < 0.3 or classified.label in ["card_arrival", "lost_or_stolen_card"]

Grammar (no `eval`: a tokenizer and a recursive-descent parser build a small tree that evaluates on a DataFrame):

    route      := "all" | "none" | or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := operand [("==" | "!=" | "<" | "<=" | ">" | ">=") operand]
                | operand ["not"] "in" "[" literal ("," literal)* "]"
                | "(" or ")"
    operand    := stage.field | column | literal
    literal    := number | "string" | 'string' | true | false

A bare operand is a condition only when it is a boolean field (`sentiment.urgent`). `stage.field` names a top-level
property of an earlier stage's output schema; a bare name is an input column. A row an earlier stage did not
process has no value for its fields: every comparison on a missing value is false (so `not` of it is true).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>==|!=|<=|>=|<|>)
      | (?P<punct>[()\[\],])
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "all", "none"}
_ORDERING = {"<", "<=", ">", ">="}


class RouteError(ValueError):
    """A route that does not parse or names a field it may not use; the message says what and where."""


@dataclass(frozen=True)
class FieldType:
    """What a route may know of an operand: its JSON type and, for enums, the allowed values."""

    json_type: str | None  # "string" | "number" | "integer" | "boolean" | "array" | "object" | None (unknown)
    enum: tuple[Any, ...] | None = None


# ------------------------------------------------------------------------------------------------- the tree


@dataclass(frozen=True)
class _Field:
    name: str  # "stage.field" or an input column

    def values(self, frame: pd.DataFrame) -> pd.Series:
        if self.name not in frame.columns:
            raise KeyError(f"the route needs column {self.name!r}, which the rows do not have")
        return frame[self.name]


@dataclass(frozen=True)
class _Literal:
    value: Any


@dataclass(frozen=True)
class _Compare:
    left: _Field | _Literal
    op: str
    right: _Field | _Literal

    def evaluate(self, frame: pd.DataFrame) -> pd.Series:
        left, right = _side(self.left, frame), _side(self.right, frame)
        present = _present(left, frame) & _present(right, frame)
        if self.op in _ORDERING or _numeric(self.left, self.right):
            left, right = _as_number(left), _as_number(right)
        result = {
            "==": lambda: left == right,
            "!=": lambda: left != right,
            "<": lambda: left < right,
            "<=": lambda: left <= right,
            ">": lambda: left > right,
            ">=": lambda: left >= right,
        }[self.op]()
        return _bools(result, frame) & present


@dataclass(frozen=True)
class _In:
    operand: _Field
    values: tuple[Any, ...]
    negated: bool

    def evaluate(self, frame: pd.DataFrame) -> pd.Series:
        column = self.operand.values(frame)
        hit = column.isin(list(self.values)) & column.notna()
        return (~hit if self.negated else hit) & column.notna()


@dataclass(frozen=True)
class _Truthy:
    operand: _Field

    def evaluate(self, frame: pd.DataFrame) -> pd.Series:
        return self.operand.values(frame).eq(True).fillna(False).astype(bool)


@dataclass(frozen=True)
class _Not:
    inner: Any

    def evaluate(self, frame: pd.DataFrame) -> pd.Series:
        return ~self.inner.evaluate(frame)


@dataclass(frozen=True)
class _Bool:
    op: str  # "and" | "or"
    parts: tuple[Any, ...]

    def evaluate(self, frame: pd.DataFrame) -> pd.Series:
        result = self.parts[0].evaluate(frame)
        for part in self.parts[1:]:
            result = (result & part.evaluate(frame)) if self.op == "and" else (result | part.evaluate(frame))
        return result


@dataclass(frozen=True)
class _Constant:
    value: bool

    def evaluate(self, frame: pd.DataFrame) -> pd.Series:
        return pd.Series(self.value, index=frame.index, dtype=bool)


def _side(side: _Field | _Literal, frame: pd.DataFrame) -> Any:
    return side.values(frame) if isinstance(side, _Field) else side.value


def _present(side: Any, frame: pd.DataFrame) -> pd.Series:
    if isinstance(side, pd.Series):
        return side.notna()
    return pd.Series(True, index=frame.index, dtype=bool)


def _numeric(left: Any, right: Any) -> bool:
    return any(isinstance(s, _Literal) and _is_number(s.value) for s in (left, right))


def _as_number(side: Any) -> Any:
    return pd.to_numeric(side, errors="coerce") if isinstance(side, pd.Series) else side


def _bools(result: Any, frame: pd.DataFrame) -> pd.Series:
    if not isinstance(result, pd.Series):  # literal against literal
        return pd.Series(bool(result), index=frame.index, dtype=bool)
    return result.fillna(False).astype(bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------------- the route


@dataclass(frozen=True)
class Route:
    """A parsed routing condition. `evaluate` is vectorised over a DataFrame whose columns are `stage.field`
    for earlier stages' outputs and the input columns by name; `fields()` says which of them it reads."""

    text: str
    tree: Any
    referenced: tuple[str, ...]

    @property
    def routes_all(self) -> bool:
        return isinstance(self.tree, _Constant) and self.tree.value

    def fields(self) -> tuple[str, ...]:
        """Columns the route reads, in order of first use: `stage.field` or input column names."""
        return self.referenced

    def stages(self) -> tuple[str, ...]:
        """Earlier stages the route depends on."""
        return tuple(dict.fromkeys(name.split(".")[0] for name in self.referenced if "." in name))

    def evaluate(self, frame: pd.DataFrame) -> pd.Series:
        """A boolean Series aligned with `frame`: True for the rows the stage processes."""
        return self.tree.evaluate(frame)

    def matches(self, row: Mapping[str, Any]) -> bool:
        """The same rule for one row given as a mapping of column -> value."""
        return bool(self.evaluate(pd.DataFrame([dict(row)])).iloc[0])


def parse_route(text: str, resolve: Callable[[str], FieldType]) -> Route:
    """Parse `text`; `resolve(name)` returns the type of a `stage.field` or input column, or raises RouteError
    saying why the name may not be used (unknown stage, later stage, unknown field)."""
    tokens = _tokenize(text)
    parser = _Parser(text, tokens, resolve)
    return Route(text=text, tree=parser.parse(), referenced=tuple(dict.fromkeys(parser.referenced)))


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            start = len(text) - len(text[pos:].lstrip())
            raise RouteError(f"cannot read {text[start : start + 12]!r} at character {start + 1}")
        group = match.lastgroup or ""
        value = match.group(group)
        kind = "keyword" if group == "name" and value in _KEYWORDS else group
        tokens.append((kind, value, match.start(group)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(
        self, text: str, tokens: list[tuple[str, str, int]], resolve: Callable[[str], FieldType]
    ) -> None:
        self.text = text
        self.tokens = tokens
        self.pos = 0
        self.resolve = resolve
        self.referenced: list[str] = []

    # -- helpers
    def _peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _accept(self, value: str) -> bool:
        token = self._peek()
        if token is not None and token[1] == value and token[0] in ("keyword", "op", "punct"):
            self.pos += 1
            return True
        return False

    def _expect(self, value: str) -> None:
        if not self._accept(value):
            raise RouteError(f"expected {value!r} {self._where()}")

    def _where(self) -> str:
        token = self._peek()
        return "at the end" if token is None else f"at {token[1]!r} (character {token[2] + 1})"

    # -- grammar
    def parse(self) -> Any:
        if not self.tokens:
            raise RouteError("the route is empty; write `all`, `none` or a condition")
        first = self.tokens[0]
        if len(self.tokens) == 1 and first[1] in ("all", "none") and first[0] == "keyword":
            return _Constant(first[1] == "all")
        tree = self._or()
        if self._peek() is not None:
            raise RouteError(f"unexpected {self._where()}; join conditions with `and` / `or`")
        return tree

    def _or(self) -> Any:
        parts = [self._and()]
        while self._accept("or"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else _Bool("or", tuple(parts))

    def _and(self) -> Any:
        parts = [self._not()]
        while self._accept("and"):
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else _Bool("and", tuple(parts))

    def _not(self) -> Any:
        if self._accept("not"):
            return _Not(self._not())
        return self._comparison()

    def _comparison(self) -> Any:
        if self._accept("("):
            inner = self._or()
            self._expect(")")
            return inner
        left, left_type = self._operand()
        token = self._peek()
        if token is not None and token[0] == "op":
            self.pos += 1
            right, right_type = self._operand()
            self._check_compare(left, left_type, token[1], right, right_type)
            return _Compare(left, token[1], right)
        negated = self._accept("not")
        if negated or self._accept("in"):
            if negated:
                self._expect("in")
            if not isinstance(left, _Field):
                raise RouteError(f"the left side of `in` must be a field, not {left.value!r}")
            values = self._list()
            self._check_members(left, left_type, values)
            return _In(left, values, negated)
        if isinstance(left, _Field):
            if left_type.json_type not in ("boolean", None):
                raise RouteError(
                    f"{left.name} is a {left_type.json_type}, not a boolean: compare it, e.g. "
                    f"`{left.name} == ...`"
                )
            return _Truthy(left)
        raise RouteError(f"a literal alone ({left.value!r}) is not a condition; write `all` or `none`")

    def _operand(self) -> tuple[_Field | _Literal, FieldType]:
        token = self._peek()
        if token is None:
            raise RouteError("the route ends where a field or value was expected")
        kind, value, _ = token
        self.pos += 1
        if kind == "number":
            number = float(value) if any(c in value for c in ".eE") else int(value)
            return _Literal(number), FieldType("number")
        if kind == "string":
            return _Literal(_unquote(value)), FieldType("string")
        if kind == "keyword" and value in ("true", "false"):
            return _Literal(value == "true"), FieldType("boolean")
        if kind == "name":
            field_type = self.resolve(value)
            self.referenced.append(value)
            return _Field(value), field_type
        self.pos -= 1
        raise RouteError(f"expected a field or a value {self._where()}")

    def _list(self) -> tuple[Any, ...]:
        self._expect("[")
        values: list[Any] = []
        while True:
            item, _ = self._operand()
            if isinstance(item, _Field):
                raise RouteError(f"the list after `in` holds values only, not the field {item.name}")
            values.append(item.value)
            if self._accept("]"):
                return tuple(values)
            self._expect(",")

    # -- type checks at load
    def _check_compare(
        self, left: Any, left_type: FieldType, op: str, right: Any, right_type: FieldType
    ) -> None:
        for side, side_type in ((left, left_type), (right, right_type)):
            if isinstance(side, _Field) and side_type.json_type in ("array", "object"):
                raise RouteError(
                    f"{side.name} is an {side_type.json_type}; a route compares scalar fields only"
                )
        if op in _ORDERING:
            for side, side_type in ((left, left_type), (right, right_type)):
                if side_type.json_type not in ("number", "integer", None):
                    shown = side.name if isinstance(side, _Field) else repr(side.value)
                    raise RouteError(f"`{op}` compares numbers, but {shown} is a {side_type.json_type}")
        field, field_type, other = (
            (left, left_type, right) if isinstance(left, _Field) else (right, right_type, left)
        )
        if isinstance(field, _Field) and isinstance(other, _Literal):
            self._check_members(field, field_type, (other.value,))

    def _check_members(self, field: _Field, field_type: FieldType, values: tuple[Any, ...]) -> None:
        for value in values:
            if not _fits(value, field_type.json_type):
                raise RouteError(f"{field.name} is a {field_type.json_type}, but {value!r} is not")
            if field_type.enum is not None and value not in field_type.enum:
                allowed = ", ".join(repr(v) for v in field_type.enum[:12])
                more = ", ..." if len(field_type.enum) > 12 else ""
                raise RouteError(f"{value!r} is not a value of {field.name} (one of {allowed}{more})")


def _fits(value: Any, json_type: str | None) -> bool:
    if json_type is None:
        return True
    if json_type in ("number", "integer"):
        return _is_number(value)
    if json_type == "string":
        return isinstance(value, str)
    if json_type == "boolean":
        return isinstance(value, bool)
    return False


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", r"\1", body)
