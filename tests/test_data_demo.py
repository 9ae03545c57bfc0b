"""The embedded demo: the hand-made catalogue's integrity and the generator's seeded structure."""

from __future__ import annotations

import collections

import pytest

from softrec.cli import main
from softrec.data.demo import generate_interactions, load_books
from softrec.data.titles import normalise_title


@pytest.fixture(scope="module")
def logs():
    return generate_interactions()


def test_catalogue_holds_300_to_400_unique_real_books():
    books = load_books()
    assert 300 <= len(books) <= 400
    titles = [b["title"] for b in books]
    assert len(set(titles)) == len(titles)
    assert all(normalise_title(t) == t and len(t) <= 60 for t in titles)
    for book in books:
        assert set(book) == {"title", "author", "year", "genres", "series", "series_index"}
        assert book["author"] and book["genres"]
        assert book["year"] is None or 1500 <= book["year"] <= 2024
    assert {"Dune", "Pride and Prejudice", "Harry Potter and the Deathly Hallows"} <= set(titles)


def test_series_are_numbered_consistently():
    series = collections.defaultdict(list)
    for book in load_books():
        if book["series"]:
            series[book["series"]].append(book["series_index"])
        else:
            assert book["series_index"] is None
    assert len(series) >= 40
    for name, indices in series.items():
        assert len(indices) >= 2 and len(set(indices)) == len(indices), name
    assert sorted(series["Harry Potter"]) == list(range(1, 8))


def test_generator_is_seeded_and_sized(logs):
    assert logs.equals(generate_interactions())
    assert not logs.equals(generate_interactions(seed=1))
    lengths = logs.groupby("user").size()
    assert logs["user"].nunique() == 800
    assert lengths.min() >= 8 and lengths.max() <= 30
    assert not logs.duplicated(["user", "item"]).any()  # nobody reads a book twice
    assert (logs.groupby("user")["timestamp"].diff().dropna() > 0).all()


def test_sequences_have_series_author_and_popularity_structure(logs):
    books = load_books()
    sequences = [[int(i) for i in seq] for _, seq in logs.groupby("user")["item"]]
    consecutive = [(a, b) for seq in sequences for a, b in zip(seq, seq[1:], strict=False)]
    series_next = {}
    for i, b in enumerate(books):
        for j, c in enumerate(books):
            if b["series"] and b["series"] == c["series"] and c["series_index"] == b["series_index"] + 1:
                series_next[i] = j
    continued = sum(series_next.get(a) == b for a, b in consecutive)
    same_author = sum(books[a]["author"] == books[b]["author"] for a, b in consecutive)
    assert continued / len(consecutive) > 0.15  # chance level is well below 1%
    assert same_author / len(consecutive) > 0.15  # chance level is a few percent
    counts = logs["item"].value_counts()
    assert counts.iloc[0] > 10 * counts.median()  # a Zipf-like head


def test_demo_prepares_offline_with_default_settings(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SOFTREC_DATA_DIR", str(tmp_path / "nothing-here"))
    assert main(["data", "prepare", "--dataset", "demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out
    from softrec.data.dataset import PreparedDataset

    dataset = PreparedDataset.load(tmp_path / "demo")
    stats = dataset.stats()
    assert stats["users"] > 500 and 300 <= stats["items"] <= 391
    assert stats["train"] > 3000 and stats["valid"] > 300 and stats["test"] > 300
    assert dataset.domain.items == "books" and dataset.domain.verb == "read"
    first = dataset.catalogue[0]
    assert first.extra["author"] and first.extra["genres"]
    assert main(["data", "stats", str(tmp_path / "demo")]) == 0
    assert "interactions" in capsys.readouterr().out
