"""What must still parse next to the malformed corpus (tests/test_data_malformed.py): valid fixtures,
quoting, repeated-but-equal JSON keys, invisible characters, and the readers' size limits.
"""

from __future__ import annotations

import gzip
import io
import json

import pytest
from fixtures import datafiles, edits

from softrec.cli import main
from softrec.data.readers import files, jsontext, read_source, tables
from softrec.errors import DataFormatError


@pytest.mark.parametrize("fmt", sorted(datafiles.WRITERS))
def test_valid_fixtures_still_parse(tmp_path, fmt):
    source = read_source(datafiles.WRITERS[fmt](tmp_path))
    assert len(source.catalogue) == len(datafiles.TITLES)
    assert not any("invisible" in n for n in source.notes)


def test_quoted_commas_doubled_quotes_and_crlf_parse(tmp_path):
    d = datafiles.generic(tmp_path)
    text = (d / "items.csv").read_text().replace('"Dune"', '"Dune, ""the"" novel"')
    (d / "items.csv").write_bytes(text.replace("\n", "\r\n").encode())
    source = read_source(d)
    assert source.catalogue["title"].iloc[0] == 'Dune, "the" novel'


def test_same_value_repeated_json_key_is_accepted(tmp_path):
    d = datafiles.windows(tmp_path)
    pairs = edits.title_pairs()
    pairs.insert(3, ("3", json.dumps("Dracula")))
    edits.write_titles(d, edits.json_pairs(pairs))
    assert read_source(d).catalogue.set_index("item").loc["3", "title"] == "Dracula"


def test_invisible_characters_are_stripped_and_counted(tmp_path):
    d = datafiles.generic(tmp_path)
    text = (d / "items.csv").read_text()
    text = text.replace('"Emma"', '"Em\u200bma"').replace('"Dracula"', '"\u202eDracula\u202c\x07"')
    (d / "items.csv").write_text(text)
    source = read_source(d)
    titles = list(source.catalogue["title"])
    assert titles[1] == "Emma" and titles[2] == "Dracula"
    (note,) = [n for n in source.notes if "invisible" in n]
    assert "4 invisible" in note and "2 title(s)" in note and "U+200B" in note


def test_tabs_and_line_breaks_inside_json_titles_are_kept_for_the_protocol(tmp_path):
    d = datafiles.windows(tmp_path)
    pairs = edits.title_pairs()
    pairs[0] = ("1", json.dumps("Dune\tMessiah"))
    edits.write_titles(d, edits.json_pairs(pairs))
    assert read_source(d).catalogue["title"].iloc[0] == "Dune\tMessiah"


def test_streamed_line_length_is_capped(tmp_path, monkeypatch):
    d = datafiles.amazon2023(tmp_path, gz=False)
    monkeypatch.setattr(files, "MAX_LINE_BYTES", 300)
    edits.set_line(d / "meta_Books.jsonl", 2, json.dumps({"parent_asin": "P1", "title": "E" * 400}))
    with pytest.raises(DataFormatError, match=r"meta_Books.jsonl:2: line longer than"):
        read_source(d)


def test_zip_with_lying_sizes_is_stopped_while_reading(tmp_path, monkeypatch):
    """The declared size passes the check; the real expansion is capped as it is read."""
    monkeypatch.setattr(files, "MAX_INFLATE_RATIO", 1)
    monkeypatch.setattr(files, "_RATIO_FLOOR", 10)
    path = edits.grouplens_zip(tmp_path, b"1\t2\t4\t100\n" * 50)
    with pytest.raises(DataFormatError, match="decompression bomb"):
        read_source(path)


def test_gzip_limits_scale_with_the_compressed_size():
    assert files.inflate_limit(10) == 1 << 20
    assert files.inflate_limit(1 << 20) == 100 << 20
    assert files.inflate_limit(1 << 30) == files.MAX_INFLATED_BYTES  # read whole into memory: capped
    assert files.inflate_limit(1 << 30, in_memory=False) == 100 << 30  # streamed (multi-GB reviews): ratio only


@pytest.mark.parametrize("streamed", [True, False])
def test_gzip_declared_size_is_refused_before_decompressing(tmp_path, monkeypatch, streamed):
    d = datafiles.amazon2023(tmp_path, gz=True)
    name = "Books.jsonl.gz" if streamed else "meta_Books.jsonl.gz"
    raw = bytearray((d / name).read_bytes())
    raw[-4:] = (3 << 30).to_bytes(4, "little")  # the trailer claims 3 GiB
    (d / name).write_bytes(bytes(raw))
    monkeypatch.setattr(files.gzip, "GzipFile", None)  # decompressing at all would fail the test
    with pytest.raises(DataFormatError, match=rf"{name}: declares 3,221,225,472 bytes uncompressed"):
        read_source(d) if streamed else files.read_bytes(d / name)


@pytest.mark.parametrize("streamed", [True, False])
def test_gzip_bomb_with_a_lying_trailer_is_stopped_while_reading(tmp_path, streamed):
    d = datafiles.amazon2023(tmp_path, gz=True)
    raw = bytearray(gzip.compress(b" " * (4 << 20)))
    raw[-4:] = b"\0\0\0\0"
    (d / "Books.jsonl.gz").write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match=r"Books.jsonl.gz: expands past 1,048,576 bytes"):
        read_source(d) if streamed else files.read_bytes(d / "Books.jsonl.gz")


def test_load_json_reports_lines():
    with pytest.raises(DataFormatError, match=r"f.json:3: key 'a' appears twice"):
        jsontext.load_json('{\n "a": 1,\n "a": 2\n}', "f.json")
    with pytest.raises(DataFormatError, match=r"f.json:2: non-standard JSON value -Infinity"):
        jsontext.load_json('[1,\n-Infinity]', "f.json")
    assert jsontext.load_json('{"s": "NaN Infinity \\"a\\": {"}', "f.json") == {"s": 'NaN Infinity "a": {'}
    assert jsontext.load_json(io.StringIO("[1]").read(), "f.json") == [1]


@pytest.mark.parametrize("text", [
    "user,item,timestamp\nu0,b1,5\nu1,b2,6\n",
    "user,item,timestamp\r\nu0,b1,5\r\n\r\nu1,b2,6",
    "user,item,timestamp\n\nu0,b1,5\n\n\nu1,,6\n,,\nu2,b\u00e9,7\n",
    "user,item,timestamp\nu0, b1 ,5\nu1,b2,6 \n",
])
def test_fast_unquoted_path_agrees_with_the_strict_csv_path(tmp_path, text):
    """Quote-free text goes through pandas' C parser after a vectorised field count; it must give
    exactly what the strict csv-module path gives."""
    path = tmp_path / "interactions.csv"
    fast = tables.read_table(path, ["user", "item", "timestamp"], text=text)
    rows, lines = tables.parse_rows(path, text, ",", ["user", "item", "timestamp"], quoting=0, first=2)
    kept = [(r, n) for r, n in zip(rows, lines, strict=True) if any(r)]
    assert [list(r) for r in fast[["user", "item", "timestamp"]].itertuples(index=False)] == [r for r, _ in kept]
    assert list(fast["_line"]) == [n for _, n in kept]


@pytest.mark.parametrize("text, line, found", [
    ("user,item,timestamp\nu0,b1,5\nu1,b2\n", 3, 2),
    ("user,item,timestamp\nu0,b1,5,9\n", 2, 4),
    ("user,item,timestamp\r\nu0,b1,5\r\n   \r\n", 3, 1),
])
def test_fast_unquoted_path_counts_fields_per_line(tmp_path, text, line, found):
    with pytest.raises(DataFormatError, match=rf"interactions.csv:{line}: expected 3 fields, found {found}"):
        tables.read_table(tmp_path / "interactions.csv", ["user", "item", "timestamp"], text=text)


def test_stripped_characters_are_reported_by_prepare(tmp_path, capsys):
    d = datafiles.generic(tmp_path)
    (d / "items.csv").write_text((d / "items.csv").read_text().replace('"Emma"', '"\u200fEmma\u200e"'))
    assert main(["data", "prepare", "--dataset", str(d), "--out", str(tmp_path / "out"), "--k-core", "0"]) == 0
    out = capsys.readouterr().out
    assert "note: titles: removed 2 invisible control/format character(s) from 1 title(s)" in out
    assert "U+200F RIGHT-TO-LEFT MARK" in out
    titles = [json.loads(line)["title"] for line in (tmp_path / "out" / "catalogue.jsonl").read_text().splitlines()]
    assert "Emma" in titles and not any("\u200f" in t for t in titles)
