"""Each reader on small files the tests write, format detection, and the real datasets when present."""

from __future__ import annotations

import math

import pytest
from conftest import shared_dataset
from fixtures import datafiles

from softrec.data.readers import detect_format, read_source


@pytest.mark.parametrize("fmt", list(datafiles.WRITERS))
def test_every_format_is_detected_and_read(tmp_path, fmt):
    path = datafiles.WRITERS[fmt](tmp_path)
    assert detect_format(path) == fmt
    source = read_source(path)
    assert source.format == fmt
    titles = set(source.catalogue["title"])
    assert "Dune" in titles or "Dune (1990)" in titles
    if source.interactions is not None:
        assert len(source.interactions) == 48
        assert set(source.interactions.columns) >= {"user", "item", "timestamp"}
        assert source.interactions["timestamp"].min() >= 1_000_000
    else:
        assert {"train", "test"} <= set(source.windows)
        first = source.windows["train"].iloc[0]
        assert len(first["items"]) >= 2


def test_recbole_keeps_extra_item_fields(tmp_path):
    source = read_source(datafiles.recbole(tmp_path))
    row = source.catalogue.iloc[0].to_dict()
    assert row == {"item": "1", "title": "Dune", "release_year": "1990"}
    assert source.interactions.iloc[0].to_dict() == {"user": "u0", "item": "1", "timestamp": 1_000_000.0}


def test_grouplens_zip_decodes_latin1_titles_and_genres(tmp_path):
    source = read_source(datafiles.grouplens_zip(tmp_path))
    row = source.catalogue[source.catalogue["item"] == "4"].iloc[0]
    assert row["title"] == "Belov\xe9d (1993)"
    assert row["genres"] == "unknown"
    assert source.domain.items == "movies"


def test_amazon2023_plain_and_gzip_agree_and_convert_ms(tmp_path):
    plain = read_source(datafiles.amazon2023(tmp_path / "a", gz=False))
    packed = read_source(datafiles.amazon2023(tmp_path / "b", gz=True))
    assert plain.interactions.astype(str).equals(packed.interactions.astype(str))
    assert plain.interactions["timestamp"].iloc[0] == 1_000_000.0
    assert set(plain.catalogue.columns) >= {"item", "title", "main_category", "store"}
    assert plain.domain.items == "books"


def test_d3_uses_valid_as_training_pool_without_timestamps(tmp_path):
    source = read_source(datafiles.d3(tmp_path))
    assert set(source.windows) == {"train", "test"}
    assert math.isnan(source.windows["train"]["timestamp"].iloc[0])
    assert source.catalogue.iloc[0].to_dict() == {"item": "0", "title": "Dune", "brand": "Acme", "categories": ""}
    assert any("valid.csv is the training pool" in note for note in source.notes)


def test_generic_accepts_aliases_and_iso_dates(tmp_path):
    d = tmp_path / "log"
    datafiles.write(d / "events.csv", "user_id,item_id,time\nalice,x,2020-01-02T00:00:00Z\nalice,y,1577923200\n")
    datafiles.write(d / "catalogue.csv", "item_id,name\nx,Dune\ny,Emma\n")
    assert detect_format(d) == "csv"
    source = read_source(d)
    assert source.interactions["timestamp"].tolist() == [1577923200.0, 1577923200.0]


def test_real_ml100k_reader():
    source = read_source(shared_dataset("ml-100k"))
    assert source.format == "recbole"
    assert len(source.interactions) == 100_000
    assert source.interactions["user"].nunique() == 943
    assert len(source.catalogue) == 1682


def test_real_amazon_books_reader():
    source = read_source(shared_dataset("amazon-books"))
    assert source.format == "windows"
    assert {k: len(v) for k, v in source.windows.items()} == {"train": 35060, "test": 4383}
    assert len(source.catalogue) == 6344


def test_real_amazon_industrial_reader():
    source = read_source(shared_dataset("amazon-industrial"))
    assert source.format == "d3"
    assert {k: len(v) for k, v in source.windows.items()} == {"train": 4532, "test": 4533}
    assert len(source.catalogue) == 3686


def test_amazon2023_rating_only_csv(tmp_path):
    d = datafiles.amazon2023(tmp_path, gz=True)
    (d / "Books.jsonl.gz").unlink()
    csv = "user_id,parent_asin,rating,timestamp\n" + "".join(
        f"{u},P{i},5.0,{t * 1000}\n" for u, i, t in datafiles.rows())
    datafiles.write(d / "Books.csv", csv)
    source = read_source(d)
    assert len(source.interactions) == 48 and source.interactions["timestamp"].iloc[0] == 1_000_000.0
