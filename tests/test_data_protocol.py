"""The protocol pieces (titles, k-core, windows, splits, samples, ids) and prepare_dataset's contract."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fixtures import datafiles

from softrec.config import DataConfig
from softrec.data.dataset import PreparedDataset
from softrec.data.protocol import prepare_dataset
from softrec.data.titles import build_items, normalise_title, sort_ids
from softrec.data.windowing import (
    Window,
    carve_latest,
    k_core,
    sample_indices,
    split_loo,
    split_time,
    user_windows,
)
from softrec.errors import UserError
from softrec.runs import path_sha256

SMALL = {"k_core": 0, "train_size": None, "valid_size": None, "test_size": None}


def config(dataset, **overrides) -> DataConfig:
    return DataConfig(dataset=str(dataset), **{**SMALL, **overrides})


def test_titles_are_unescaped_and_whitespace_normalised():
    assert normalise_title("  Love&#39;s Labour &amp;amp; Co\n\t Ltd ") == "Love's Labour & Co Ltd"
    assert normalise_title("   ") == ""
    assert normalise_title(None) == ""


def test_k_core_is_iterative():
    # item c has 2 users; dropping user z (1 interaction left after c goes) cascades
    inter = pd.DataFrame({
        "user": ["x", "x", "y", "y", "z", "z"],
        "item": ["a", "b", "a", "b", "c", "a"],
        "timestamp": range(6),
    })
    kept, info = k_core(inter, 2)
    assert sorted(kept["user"].unique()) == ["x", "y"]
    assert sorted(kept["item"].unique()) == ["a", "b"]
    assert info["rounds"] == 2


def test_sliding_windows_follow_the_reference():
    assert user_windows(11, 10, 1, 1) == [(0, 10)]  # <= history_len + 1: one window
    assert user_windows(5, 10, 1, 1) == [(0, 4)]
    assert user_windows(13, 10, 1, 1) == [(0, 10), (1, 11), (2, 12)]
    assert user_windows(14, 10, 2, 1) == [(1, 11), (3, 13)]  # stride counted back from the last
    assert user_windows(1, 10, 1, 1) == []
    assert user_windows(3, 10, 1, 3) == []  # history 2 < min_history 3


def _windows(n: int) -> list[Window]:
    return [Window(f"u{i % 3}", (i,), i + 1, float(100 - i), i) for i in range(n)]


def test_time_split_sorts_by_target_time():
    splits = split_time(_windows(10), (0.8, 0.1, 0.1))
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [8, 1, 1]
    assert splits["test"][0].timestamp == max(w.timestamp for w in _windows(10))
    assert max(w.timestamp for w in splits["train"]) <= splits["valid"][0].timestamp


def test_leave_one_out_keeps_each_users_last_windows():
    splits = split_loo(_windows(9))
    assert {w.user for w in splits["test"]} == {"u0", "u1", "u2"}
    for user in ("u0", "u1", "u2"):
        own = [w for w in _windows(9) if w.user == user]
        latest = max(own, key=lambda w: w.timestamp)
        assert [w for w in splits["test"] if w.user == user] == [latest._replace(position=2, of=3)]


def test_carving_takes_the_latest_windows():
    earlier, latest = carve_latest(_windows(10), 0.2)
    assert len(latest) == 2
    assert min(w.timestamp for w in latest) > max(w.timestamp for w in earlier)


def test_samples_are_seeded_ordered_and_complete_when_none():
    a, b = sample_indices(100, 10, 42), sample_indices(100, 10, 42)
    assert a == b == sorted(a) and len(set(a)) == 10
    assert sample_indices(100, 10, 7) != a
    assert sample_indices(5, None, 42) == sample_indices(5, 50, 42) == [0, 1, 2, 3, 4]


def test_item_ids_are_stable_and_duplicate_titles_kept_apart():
    assert sort_ids(["10", "9", "100"]) == ["9", "10", "100"]
    assert sort_ids(["b", "a", "B"]) == ["B", "a", "b"]
    frame = pd.DataFrame({"item": ["1", "2", "3", "4"], "title": ["Sabrina", "Sabrina", "Emma", "Sabrina"],
                          "year": [1954, 1995, None, 1954]})
    items, duplicates = build_items(frame, ["1", "2", "3", "4"])
    assert [i.title for i in items] == ["Sabrina", "Sabrina (1995)", "Emma", "Sabrina (2)"]
    assert items[1].extra["duplicate_of"] == 0 and items[1].extra["original_title"] == "Sabrina"
    assert items[2].extra == {"source_id": "3"}  # empty extras are left out
    assert [d["item_id"] for d in duplicates] == [1, 3]


@pytest.mark.parametrize("fmt", list(datafiles.WRITERS))
def test_prepare_every_format(tmp_path, fmt):
    path = datafiles.WRITERS[fmt](tmp_path / "src")
    dataset = prepare_dataset(config(path), tmp_path / "out")
    stats = dataset.stats()
    for key in ("users", "items", "interactions", "train", "valid", "test"):
        assert isinstance(stats[key], int) and stats[key] > 0, key
    for split in ("train", "valid", "test"):  # the counts describe the files written, not just any number
        assert stats[split] == len(dataset.split(split)), split
    assert stats["items"] == len(dataset.catalogue)
    assert stats["users"] == 6
    assert len(dataset.titles) == len(set(dataset.titles)) == stats["items"]
    for split in ("train", "valid", "test"):
        for sample in dataset.split(split):
            assert 0 <= sample.target < stats["items"]
            assert 1 <= len(sample.history) <= 10
    if fmt != "amazon2023":  # same interactions however the source packs them
        assert stats["interactions"] == stats["before_filtering"]["interactions"] == 48
    if fmt == "amazon2023":  # the item with an empty title is dropped, with its interactions
        assert stats["dropped"]["items_without_title"] == 1
        assert stats["dropped"]["interactions_without_title"] == stats["before_filtering"]["interactions"] - stats["interactions"]


def test_prepare_time_split_windows_are_chronological(tmp_path):
    dataset = prepare_dataset(config(datafiles.recbole(tmp_path)), tmp_path / "out")
    last_train = max(s.timestamp for s in dataset.split("train"))
    assert last_train <= min(s.timestamp for s in dataset.split("valid"))
    assert max(s.timestamp for s in dataset.split("valid")) <= min(s.timestamp for s in dataset.split("test"))
    # 6 users x 8 interactions, history 10 -> one window each
    assert dataset.stats()["windows"] == {"train": 4, "valid": 1, "test": 1}


def test_prepare_loo_and_short_histories(tmp_path):
    dataset = prepare_dataset(config(datafiles.recbole(tmp_path), split="loo", history_len=3), tmp_path / "out")
    stats = dataset.stats()
    assert stats["test"] == stats["valid"] == 6  # one window per user each
    assert stats["history_length"]["train"]["max"] == 3
    users = [s.user_id for s in dataset.split("test")]
    assert sorted(users) == datafiles.USERS


def test_prepare_carves_validation_from_latest_training_windows(tmp_path):
    dataset = prepare_dataset(config(datafiles.windows(tmp_path)), tmp_path / "out")
    train, valid = dataset.split("train_full"), dataset.split("valid")
    assert valid and max(s.timestamp for s in train) <= min(s.timestamp for s in valid)
    assert dataset.stats()["k_core"]["applied"] is False


def test_rerun_is_byte_identical_and_reused(tmp_path):
    src = datafiles.recbole(tmp_path)
    first = prepare_dataset(config(src, train_size=3), tmp_path / "a")
    digest = path_sha256(first.path)
    mtime = (first.path / "train.jsonl").stat().st_mtime_ns
    again = prepare_dataset(config(src, train_size=3), tmp_path / "a")
    assert path_sha256(again.path) == digest
    assert (again.path / "train.jsonl").stat().st_mtime_ns == mtime  # reused, not rewritten
    elsewhere = prepare_dataset(config(src, train_size=3), tmp_path / "b")
    assert path_sha256(elsewhere.path) == digest  # fresh build: same bytes
    changed = prepare_dataset(config(src, train_size=2), tmp_path / "a")
    assert len(changed.split("train")) == 2  # settings changed: rebuilt


def test_changed_input_or_tampered_output_is_rebuilt(tmp_path):
    src = datafiles.recbole(tmp_path)
    out = prepare_dataset(config(src), tmp_path / "out").path
    (out / "test.jsonl").write_text("")
    assert len(prepare_dataset(config(src), out).split("test")) == 1
    items = src / "tiny.item"
    items.write_text(items.read_text().replace("Dune", "Dune Messiah"))
    assert "Dune Messiah" in prepare_dataset(config(src), out).titles


def test_prepare_refuses_to_replace_an_unrelated_directory(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a prepared dataset"):
        prepare_dataset(config(datafiles.recbole(tmp_path)), out)
    assert (out / "precious.txt").exists()


def test_dataset_json_records_settings_and_source_checksums(tmp_path):
    dataset = prepare_dataset(config(datafiles.recbole(tmp_path)), tmp_path / "out")
    meta = json.loads((dataset.path / "dataset.json").read_text())
    assert set(meta["sources"]) == {"tiny.inter", "tiny.item"}
    assert meta["settings"]["k_core"] == 0 and meta["settings"]["name"] == "tiny"
    assert str(tmp_path) not in (dataset.path / "dataset.json").read_text()  # location-independent
    assert PreparedDataset.load(dataset.path).intact()


def test_domain_words_can_be_overridden(tmp_path):
    dataset = prepare_dataset(config(datafiles.generic(tmp_path), domain=("novel", "novels", "read")), tmp_path / "o")
    assert dataset.domain.items == "novels"


def test_exact_duplicate_interaction_rows_count_once(tmp_path):
    """Reference origin_data/amazon_process.py line 13: `df.drop_duplicates()` before anything else."""
    src = datafiles.generic(tmp_path / "src")
    log = src / "interactions.csv"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines) + lines[1] + lines[2])  # two rows repeated exactly
    stats = prepare_dataset(config(src), tmp_path / "out").stats()
    assert stats["before_filtering"]["interactions"] == 50
    assert stats["dropped"]["duplicate_interaction_rows"] == 2
    assert stats["interactions"] == 48
