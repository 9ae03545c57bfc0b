"""Strict JSON for source files: the line of every problem, no NaN/Infinity, no key twice with
different values, no NUL in strings, bounded nesting."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from softrec.errors import DataFormatError

# Stricter than json.loads: standard JSON only (no NaN/Infinity), no key given twice with different
# values (json.loads keeps the last silently), no NUL in strings, nesting at most MAX_JSON_DEPTH.
MAX_JSON_DEPTH = 64
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"(?:\s*:)?|[{}\[\]]|-?Infinity|NaN')
_JSON_NUL = re.compile(r'(?<!\\)(?:\\\\)*\\u0000')


class _JSONProblem(Exception):
    def __init__(self, kind: str, detail: str = ""):
        super().__init__(kind)
        self.kind, self.detail = kind, detail


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen and seen[key] != value:
                raise _JSONProblem("duplicate", key)
            seen[key] = value
    return out


def _json_constant(name: str) -> Any:
    raise _JSONProblem("constant", name)


_DECODER = json.JSONDecoder(object_pairs_hook=_json_pairs, parse_constant=_json_constant)  # built once: per call costs


def _too_deep(value: Any) -> bool:
    """Whether parsed JSON nests more than MAX_JSON_DEPTH containers (iterative, stops early)."""
    if not isinstance(value, dict | list):
        return False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _json_find(text: str, kind: str, detail: str = "") -> int | None:
    """Where (a character offset) the first `kind` problem of `text` is, by a small tokenizer that
    skips strings; None when it cannot tell. Only run on the error path (and for deep nesting)."""
    scopes: list[set[str] | None] = []
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in ("{", "["):
            scopes.append(set() if token == "{" else None)
            if kind == "depth" and len(scopes) > MAX_JSON_DEPTH:
                return match.start()
        elif token in ("}", "]"):
            if scopes:
                scopes.pop()
        elif token[0] != '"':
            if kind == "constant":
                return match.start()
        elif kind == "duplicate" and token[-1] == ":" and scopes and scopes[-1] is not None:
            try:
                key = json.loads(token[:-1].rstrip())
            except ValueError:
                continue
            if key == detail and key in scopes[-1]:
                return match.start()
            scopes[-1].add(key)
        elif kind == "key" and token[-1] == ":":
            try:
                if json.loads(token[:-1].rstrip()) == detail:
                    return match.start()
            except ValueError:
                continue
    return None


def json_line(text: str, kind: str, detail: str = "", first_line: int = 1) -> int | None:
    """The line of `_json_find`'s offset, counted from `first_line`."""
    at = _json_find(text, kind, detail)
    return None if at is None else first_line + text.count("\n", 0, at)


def load_json(text: str, path: Path | str, *, line: int | None = None, expected: str = "") -> Any:
    """Strict JSON (see above); `line` is the line number of `text` in `path` (JSON Lines)."""
    expect = f"; expected {expected}" if expected else ""
    first = line or 1

    def fail(at: int | None, problem: str) -> DataFormatError:
        at = line or at  # one JSON Lines record: its line, whatever the offset
        where = f"{path}:{at}" if at is not None else str(path)
        return DataFormatError(where, problem)

    nul = _JSON_NUL.search(text) if "\\u0000" in text else None
    if nul is not None:
        raise fail(first + text.count("\n", 0, nul.start()), "a string contains a NUL character (\\u0000); "
                   "expected plain text")
    too_deep = f"JSON nested more than {MAX_JSON_DEPTH} levels deep{expect}"
    try:
        value = _DECODER.decode(text)
        if text.count("{") + text.count("[") > MAX_JSON_DEPTH and _too_deep(value):
            raise RecursionError
        return value
    except RecursionError:  # beyond the parser's own limit, or beyond MAX_JSON_DEPTH
        raise fail(json_line(text, "depth", first_line=first), too_deep) from None
    except json.JSONDecodeError as exc:
        raise fail(first + exc.lineno - 1, f"not valid JSON ({exc.msg}){expect}") from None
    except _JSONProblem as exc:
        at = json_line(text, exc.kind, exc.detail, first)
        if exc.kind == "constant":
            raise fail(at, f"non-standard JSON value {exc.detail} (not a finite number){expect}") from None
        raise fail(at, f"key {exc.detail!r} appears twice in one object with different values; "
                   "expected each key once (which value is right?)") from None

