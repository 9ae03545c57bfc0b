"""The embedded demo dataset: REAL books, SYNTHETIC readers. Never report results on it as a benchmark.

`books.json` lists 391 real, well-known books (title as commonly written in English, author, year
of first publication, a few genres, and series name + position where the book belongs to a
series; `series_index` follows publication order, 0 marks a prequel). It was assembled by hand for
softrec so that an LLM's world knowledge of these books can genuinely help.

The reading sequences are SYNTHETIC, produced by `generate_interactions` with a fixed seed, so the
demo runs offline on a fresh machine. They are a test bed for the pipeline, not evidence about real
readers: results on `demo` must never be reported as a benchmark.

The generating process (all draws from one `numpy.random.Generator(PCG64(seed))`):

1. Popularity: every entry point (a standalone book, or the first book of a series) gets a
   Zipf-like weight 1 / rank^0.8 over a seeded random ranking; book k of a series inherits its
   series' weight times 0.6^(k-1) (later volumes are read less, mostly by continuation).
2. A reader gets 8-30 reads (8 + a geometric draw, mean about 17), 1-3 favourite genres (drawn in
   proportion to how common each genre is) and 1-2 favourite authors among those writing in them,
   a start date between 2016-01-01 and 2023-06-30, and gaps between reads of 1 hour + an
   exponential draw with a 9-day mean.
3. Each next book is unread and chosen by one mechanism:
   - series continuation (probability 0.55 when a started series has an unread next volume): the
     next volume of the most recently read series;
   - otherwise, one of: author affinity 0.20 (books by favourite or already-read authors),
     genre affinity 0.45 (books sharing a favourite genre, weighted up by the number shared),
     popularity 0.25 (the whole catalogue), noise 0.10 (uniform). Within a mechanism, books are
     weighted by popularity, except noise; a series volume whose previous volume is unread gets
     weight x0.05, since readers start a series at its beginning.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from softrec.data.dataset import Domain

CATALOGUE_PATH = Path(__file__).with_name("books.json")
GENERATOR_VERSION = 1
DEMO_USERS = 800
DEMO_SEED = 20250527
DOMAIN = Domain("book", "books", "read")

ZIPF_EXPONENT = 0.8
SERIES_DECAY = 0.6
P_CONTINUE = 0.55
MECHANISMS = {"author": 0.20, "genre": 0.45, "popularity": 0.25, "noise": 0.10}
OUT_OF_ORDER = 0.05
MIN_READS, MAX_READS, MEAN_EXTRA_READS = 8, 30, 9
START, END = datetime(2016, 1, 1, tzinfo=UTC), datetime(2023, 6, 30, tzinfo=UTC)
MEAN_GAP_DAYS = 9.0


@cache
def load_books() -> tuple[dict[str, Any], ...]:
    """The catalogue as shipped (a tuple of dicts; do not mutate)."""
    return tuple(json.loads(CATALOGUE_PATH.read_text(encoding="utf-8")))


class _Library:
    """Per-book arrays the generator samples from."""

    def __init__(self, books: tuple[dict[str, Any], ...], rng: np.random.Generator):
        self.books = books
        n = len(books)
        self.authors = [b["author"] for b in books]
        self.genres = [set(b["genres"]) for b in books]
        self.series = [b.get("series") for b in books]
        order: dict[str, list[int]] = {}
        for i in sorted(range(n), key=lambda i: (books[i].get("series_index") or 0, i)):
            if self.series[i]:
                order.setdefault(self.series[i], []).append(i)
        self.next_in_series = {a: b for ids in order.values() for a, b in zip(ids, ids[1:], strict=False)}
        self.previous = {b: a for a, b in self.next_in_series.items()}
        # popularity: Zipf over a seeded ranking of entry points; later volumes decay
        entries = [i for i in range(n) if i not in self.previous]
        ranks = rng.permutation(len(entries)) + 1
        entry_weight = {e: 1.0 / r**ZIPF_EXPONENT for e, r in zip(entries, ranks, strict=True)}
        self.popularity = np.zeros(n)
        for e in entries:
            self.popularity[e] = entry_weight[e]
            book, k = e, 1
            while book in self.next_in_series:
                book, k = self.next_in_series[book], k + 1
                self.popularity[book] = entry_weight[e] * SERIES_DECAY ** (k - 1)
        genre_counts: dict[str, int] = {}
        for genres in self.genres:
            for g in genres:
                genre_counts[g] = genre_counts.get(g, 0) + 1
        self.genre_names = sorted(genre_counts)
        self.genre_freq = np.array([genre_counts[g] for g in self.genre_names], dtype=float)


def _reader(lib: _Library, rng: np.random.Generator, start: float) -> list[tuple[int, float]]:
    n_reads = min(MAX_READS, MIN_READS + int(rng.geometric(1.0 / (MEAN_EXTRA_READS + 1))) - 1)
    n_genres = int(rng.integers(1, 4))
    fav_genres = set(rng.choice(lib.genre_names, size=n_genres, replace=False,
                                p=lib.genre_freq / lib.genre_freq.sum()))
    in_genres = [i for i in range(len(lib.books)) if lib.genres[i] & fav_genres]
    candidates = sorted({lib.authors[i] for i in in_genres})
    author_pop = np.array([sum(lib.popularity[i] for i in in_genres if lib.authors[i] == a) for a in candidates])
    n_authors = min(len(candidates), int(rng.integers(1, 3)))
    fav_authors = set(rng.choice(candidates, size=n_authors, replace=False, p=author_pop / author_pop.sum()))

    read: list[int] = []
    seen = np.zeros(len(lib.books), dtype=bool)
    genre_overlap = np.array([len(g & fav_genres) for g in lib.genres], dtype=float)
    out_of_order = np.array([1.0 if i not in lib.previous else OUT_OF_ORDER for i in range(len(lib.books))])
    mechanisms, p_mechanisms = list(MECHANISMS), np.array(list(MECHANISMS.values()))
    while len(read) < n_reads:
        book = _continuation(lib, read, seen) if rng.random() < P_CONTINUE else None
        if book is None:
            mechanism = mechanisms[rng.choice(len(mechanisms), p=p_mechanisms)]
            if mechanism == "noise":
                weights = np.ones(len(lib.books))
            else:
                weights = lib.popularity * out_of_order
                if mechanism == "author":
                    liked = fav_authors | {lib.authors[i] for i in read}
                    weights = weights * np.array([a in liked for a in lib.authors])
                elif mechanism == "genre":
                    weights = weights * genre_overlap
            weights = np.where(seen, 0.0, weights)
            if weights.sum() <= 0:
                weights = np.where(seen, 0.0, lib.popularity)
            book = int(rng.choice(len(lib.books), p=weights / weights.sum()))
        read.append(book)
        seen[book] = True
    gaps = 3600.0 + rng.exponential(MEAN_GAP_DAYS * 86400.0, size=len(read))
    return list(zip(read, start + np.cumsum(gaps), strict=True))


def _continuation(lib: _Library, read: list[int], seen: np.ndarray) -> int | None:
    """The next volume of the most recently read series that has an unread next volume."""
    for book in reversed(read):
        nxt = lib.next_in_series.get(book)
        if nxt is not None and not seen[nxt]:
            return nxt
    return None


def generate_interactions(n_users: int = DEMO_USERS, seed: int = DEMO_SEED) -> pd.DataFrame:
    """SYNTHETIC reading logs: columns user, item (index into books.json, as a string), timestamp."""
    rng = np.random.default_rng(seed)
    lib = _Library(load_books(), rng)
    span = (END - START).total_seconds()
    rows = []
    for u in range(n_users):
        start = START.timestamp() + float(rng.uniform(0, span))
        user = f"u{u + 1:04d}"
        rows.extend((user, str(book), float(int(t))) for book, t in _reader(lib, rng, start))
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"])


def catalogue_frame() -> pd.DataFrame:
    """books.json as catalogue rows: item (its index, as a string), title and the book's facts."""
    rows = []
    for index, book in enumerate(load_books()):
        row = {"item": str(index), "title": book["title"], "author": book["author"],
               "year": book.get("year"), "genres": list(book["genres"])}
        if book.get("series"):
            row.update(series=book["series"], series_index=book.get("series_index"))
        rows.append(row)
    return pd.DataFrame(rows)


def demo_sources(n_users: int = DEMO_USERS, seed: int = DEMO_SEED) -> dict[str, str]:
    """What the demo is built from: the catalogue's checksum and the generator's identity."""
    from softrec.runs import file_sha256

    return {
        "demo/books.json": file_sha256(CATALOGUE_PATH),
        "demo/generator": f"v{GENERATOR_VERSION} users={n_users} seed={seed}",
    }


def load_demo(n_users: int = DEMO_USERS, seed: int = DEMO_SEED):
    """The demo as a `SourceData` (imported lazily to keep the readers package optional here)."""
    from softrec.data.readers.base import SourceData

    return SourceData(
        name="demo", format="demo", domain=DOMAIN, catalogue=catalogue_frame(),
        interactions=generate_interactions(n_users, seed), sources=demo_sources(n_users, seed),
        notes=["SYNTHETIC reading sequences over real books: never report as a benchmark"],
    )
