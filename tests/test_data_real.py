"""The real datasets in ../shared/data (skipped when absent): prepare, sane stats, byte-identical reruns."""

from __future__ import annotations

import pytest
from conftest import shared_dataset

from softrec.cli import main
from softrec.data.dataset import PreparedDataset
from softrec.runs import path_sha256

SIZES = ["--train-size", "256", "--valid-size", "64", "--test-size", "128"]


def prepare(name: str, out, capsys) -> PreparedDataset:
    argv = ["data", "prepare", "--dataset", str(shared_dataset(name)), "--out", str(out), *SIZES]
    assert main(argv) == 0
    first = path_sha256(out)
    mtime = (out / "dataset.json").stat().st_mtime_ns
    assert main(argv) == 0  # rerun: reused, same bytes
    assert path_sha256(out) == first and (out / "dataset.json").stat().st_mtime_ns == mtime
    capsys.readouterr()
    dataset = PreparedDataset.load(out)
    stats = dataset.stats()
    assert (stats["train"], stats["valid"], stats["test"]) == (256, 64, 128)
    assert len(set(dataset.titles)) == len(dataset.titles) == stats["items"]
    for sample in dataset.split("test"):
        assert 1 <= len(sample.history) <= 10 and 0 <= sample.target < stats["items"]
    return dataset


def test_ml100k(tmp_path, capsys):
    dataset = prepare("ml-100k", tmp_path / "ml", capsys)
    stats = dataset.stats()
    before = stats["before_filtering"]
    assert (before["users"], before["items"], before["interactions"]) == (943, 1682, 100_000)
    assert before["windows"] == 100_000 - 943 * 10  # every user has > 11 ratings: one window per later one
    assert stats["users"] == 943 and 1000 < stats["items"] < 1682  # 10-core drops rare movies
    assert stats["interactions"] + stats["dropped"]["interactions_k_core"] == 100_000
    windows = stats["windows"]
    assert windows["train"] == pytest.approx(8 * windows["test"], rel=0.01)  # 80/10/10
    train_end = max(s.timestamp for s in dataset.split("train_full"))
    assert train_end <= min(s.timestamp for s in dataset.split("test"))
    assert dataset.domain.items == "movies" and len(stats["duplicate_titles"]) > 0


def test_amazon_books(tmp_path, capsys):
    dataset = prepare("amazon-books", tmp_path / "books", capsys)
    stats = dataset.stats()
    assert stats["items"] == 6343  # 6,344 ids, one without a title
    assert stats["windows"]["test"] == 4383  # the published test split is kept
    assert stats["windows"]["train"] + stats["windows"]["valid"] + stats["dropped"]["windows_without_title_target"] == 35060
    assert stats["windows"]["valid"] == pytest.approx(35060 / 9, rel=0.01)  # carved: 10 / (80 + 10)
    assert max(s.timestamp for s in dataset.split("train_full")) <= min(s.timestamp for s in dataset.split("valid"))
    assert "&amp;" not in " ".join(dataset.titles) and "&#39;" not in " ".join(dataset.titles)
    assert len(stats["duplicate_titles"]) == 9
    assert dataset.domain.items == "books"


def test_amazon_industrial(tmp_path, capsys):
    dataset = prepare("amazon-industrial", tmp_path / "industrial", capsys)
    stats = dataset.stats()
    assert stats["items"] == 3686
    assert stats["windows"]["test"] == 4533
    assert stats["windows"]["train"] + stats["windows"]["valid"] == 4532
    assert stats["interactions"] == stats["before_filtering"]["interactions"]  # nothing dropped
    assert dataset.split("test")[0].timestamp is None  # D3 has no timestamps
    assert dataset.domain.items == "industrial and scientific products"
    assert dataset.domain.verb == "purchased"
