"""'did you mean ...?' for names a user types: datasets, models, settings keys, choices.

Stdlib only (imported by the config schema and the CLI before any heavy library).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

# Spellings people reach for that no edit distance finds.
ALIASES: dict[str, str] = {
    "movielens": "ml-100k",
    "movielens100k": "ml-100k",
    "movielens-100k": "ml-100k",
    "gemma": "gemma-3-270m",
    "gemma3": "gemma-3-270m",
    "gemma-3": "gemma-3-270m",
    "gemma3-270m": "gemma-3-270m",
    "smollm": "smollm2-135m",
    "smollm2": "smollm2-135m",
}


def _fold(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.casefold())


def closest(word: str, choices: Iterable[str], n: int = 1) -> list[str]:
    """The choices `word` most likely meant: same letters ignoring case/punctuation
    (`ml100k` -> `ml-100k`, `hr@10` -> `HR@10`), a known alias (`movielens`), then close spellings."""
    choices = [str(c) for c in choices]
    if not choices or not word:
        return []
    folded = _fold(word)
    same = [c for c in choices if _fold(c) == folded]
    if same:
        return same[:n]
    alias = ALIASES.get(word.casefold()) or ALIASES.get(folded)
    if alias in choices:
        return [alias]
    by_fold = {_fold(c): c for c in choices}
    matches = difflib.get_close_matches(folded, list(by_fold), n=n, cutoff=0.6)
    if matches:
        return [by_fold[m] for m in matches]
    return difflib.get_close_matches(word, choices, n=n, cutoff=0.6)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'; did you mean X?' or '' (to append to an error message)."""
    best = closest(word, choices)
    return f"; did you mean {best[0]!r}?" if best else ""
