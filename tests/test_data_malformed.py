"""The malformed-input probe of issue #17, kept as a corpus so a regression fails CI.

Each case corrupts one valid fixture (tests/fixtures/datafiles.py) the way a real file goes wrong:
strict CSV quoting, NUL and invisible characters, duplicate JSON keys, colliding ids, non-finite
numbers, deep nesting, decompression bombs, encrypted/unsupported zips, FIFOs and devices. Every
case must end in exit 2 with ONE stderr line naming the file and its line (or field), before any
output is written; the valid inputs around them must still parse (tests/test_data_readers_valid.py).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import zipfile

import pytest
from fixtures import datafiles, edits

from softrec.cli import main

# ------------------------------------------------------------------ helpers

def _digit_generic(root):
    """The generic CSV pair with integer item ids 1..10 (so '01' can collide with '1')."""
    d = root / "digits"
    datafiles.write(d / "interactions.csv", "user,item,timestamp\n" + "".join(
        f"{u},{i + 1},{t}\n" for u, i, t in datafiles.rows()))
    datafiles.write(d / "items.csv", "item,title\n" + "".join(
        f"{i + 1},{t}\n" for i, t in enumerate(datafiles.TITLES)))
    return d



# ------------------------------------------------------------------ generic CSV (interactions.csv + items.csv)
def unterminated_quote_swallows_next_row(root):
    d = datafiles.generic(root)
    edits.set_line(d / "items.csv", 3, 'b1,"Emma,Someone')  # closed by the quote that opens line 4
    return d, ["items.csv:3", "field 'title'", "unterminated quote"]


def unterminated_quote_at_end_of_file(root):
    d = datafiles.generic(root)
    edits.set_line(d / "items.csv", 11, 'b9,"Ulysses,Someone')
    return d, ["items.csv:11", "field 'title'", "never closed"]


def text_after_closing_quote(root):
    d = datafiles.generic(root)
    edits.set_line(d / "items.csv", 4, 'b2,"Dracula" by Stoker,Someone')
    return d, ["items.csv:4", "field 'title'", "closing quote"]


def row_with_too_few_fields(root):
    d = datafiles.generic(root)
    edits.set_line(d / "interactions.csv", 5, "u0,b3")
    return d, ["interactions.csv:5", "expected 3 fields, found 2"]


def nul_byte_in_title(root):
    d = datafiles.generic(root)
    edits.set_line(d / "items.csv", 4, 'b2,"Drac\x00ula",Someone')
    return d, ["items.csv:4", "NUL"]


def infinite_timestamp(root):
    d = datafiles.generic(root)
    edits.set_line(d / "interactions.csv", 3, "u0,b7,inf")
    return d, ["interactions.csv:3", "field 'timestamp'", "finite"]


def overflowing_timestamp(root):
    d = datafiles.generic(root)
    edits.set_line(d / "interactions.csv", 6, "u0,b7,1e999")
    return d, ["interactions.csv:6", "field 'timestamp'", "finite"]


def nan_timestamp(root):
    d = datafiles.generic(root)
    edits.set_line(d / "interactions.csv", 2, "u0,b0,NaN")
    return d, ["interactions.csv:2", "field 'timestamp'", "'NaN'"]


def ids_01_and_1_collide(root):
    d = _digit_generic(root)
    edits.append_line(d / "items.csv", "01,Another Dune")
    return d, ["items.csv:12", "field 'item'", "'01' is the same number as id '1'", "line 2"]


def interaction_id_spelled_differently(root):
    d = _digit_generic(root)
    edits.set_line(d / "interactions.csv", 2, "u0,01,1000000")
    return d, ["interactions.csv:2", "field 'item'", "'01' is not in items.csv", "same spelling"]


def fifo_items_csv(root):
    d = datafiles.generic(root)
    (d / "items.csv").unlink()
    os.mkfifo(d / "items.csv")
    return d, ["items.csv", "FIFO", "regular data file"]


# ------------------------------------------------------------------ RecBole atomic files
def recbole_duplicate_item_id(root):
    d = datafiles.recbole(root)
    edits.set_line(d / "tiny.item", 4, "1\tNot Dune\t1993")
    return d, ["tiny.item:4", "field 'item_id'", "'1' is listed twice"]


def recbole_ids_01_and_1(root):
    d = datafiles.recbole(root)
    edits.set_line(d / "tiny.item", 11, "010\tUlysses\t1999")
    edits.set_line(d / "tiny.item", 6, "10\tThe Hobbit\t1994")
    return d, ["tiny.item:11", "'010' is the same number as id '10'"]


def recbole_unterminated_quote(root):
    d = datafiles.recbole(root)
    edits.set_line(d / "tiny.item", 3, '2\t"Emma\t1991')
    return d, ["tiny.item:3", "field 'movie_title'", "quote"]


def recbole_nul_in_interactions(root):
    d = datafiles.recbole(root)
    edits.set_line(d / "tiny.inter", 5, "u0\t4\t4\x00\t1003000")
    return d, ["tiny.inter:5", "NUL"]


def recbole_minus_infinity_timestamp(root):
    d = datafiles.recbole(root)
    edits.set_line(d / "tiny.inter", 4, "u0\t2\t4\t-Infinity")
    return d, ["tiny.inter:4", "field 'timestamp'", "finite"]


def recbole_fifo_inter(root):
    d = datafiles.recbole(root)
    (d / "tiny.inter").unlink()
    os.mkfifo(d / "tiny.inter")
    return d, ["tiny.inter", "FIFO"]


def recbole_item_file_is_a_device(root):
    d = datafiles.recbole(root)
    (d / "tiny.item").unlink()
    (d / "tiny.item").symlink_to("/dev/zero")
    return d, ["tiny.item", "a device"]


# ------------------------------------------------------------------ sliding windows + id2name4Rec.json

def duplicate_json_key_replaces_a_title(root):
    d = datafiles.windows(root)
    pairs = edits.title_pairs()
    pairs.insert(3, ("3", json.dumps("Frankenstein")))  # 'Dracula' (id 3) would silently become this
    edits.write_titles(d, edits.json_pairs(pairs))
    return d, ["id2name4Rec.json:5", "key '3' appears twice", "different values"]


def json_keys_01_and_1(root):
    d = datafiles.windows(root)
    edits.write_titles(d, edits.json_pairs([*edits.title_pairs(), ("01", json.dumps("Another Dune"))]))
    return d, ["id2name4Rec.json:12", "'01' is the same number as id '1'", "line 2"]


def json_nan_title(root):
    d = datafiles.windows(root)
    pairs = edits.title_pairs()
    pairs[2] = ("3", "NaN")
    edits.write_titles(d, edits.json_pairs(pairs))
    return d, ["id2name4Rec.json:4", "non-standard JSON value NaN"]


def json_escaped_nul_in_title(root):
    d = datafiles.windows(root)
    pairs = edits.title_pairs()
    pairs[1] = ("2", '"Em\\u0000ma"')
    edits.write_titles(d, edits.json_pairs(pairs))
    return d, ["id2name4Rec.json:3", "NUL"]


def json_nested_too_deep(root):
    d = datafiles.windows(root)
    pairs = edits.title_pairs()
    pairs[4] = ("5", "[" * 100 + "]" * 100)
    edits.write_titles(d, edits.json_pairs(pairs))
    return d, ["id2name4Rec.json:6", "nested more than 64 levels"]


def json_nested_beyond_recursion_limit(root):
    d = datafiles.windows(root)
    edits.write_titles(d, '{"1": ' + "[" * 200_000 + "]" * 200_000 + "}")
    return d, ["id2name4Rec.json:1", "nested more than"]


def json_title_not_a_string(root):
    d = datafiles.windows(root)
    pairs = edits.title_pairs()
    pairs[6] = ("7", "{\"name\": \"Middlemarch\"}")
    edits.write_titles(d, edits.json_pairs(pairs))
    return d, ["id2name4Rec.json:8", "key '7'", "expected a title string"]


def window_infinite_timestamp(root):
    d = datafiles.windows(root)
    edits.set_line(d / "train.csv", 3, 'u0,"[1, 8]",Infinity')
    return d, ["train.csv:3", "field 'timestamp'", "finite"]


def window_unterminated_quote(root):
    d = datafiles.windows(root)
    edits.set_line(d / "train.csv", 2, 'u0,"[1, 8, 5],1000002')
    return d, ["train.csv:2", "field 'item_ids'", "quote"]


# ------------------------------------------------------------------ D3 CSV + items.txt / item.json
def d3_items_txt_ids_01_and_1(root):
    d = datafiles.d3(root)
    edits.append_line(d / "items.txt", "<a_99>\tAnother Emma\t01")
    return d, ["items.txt:11", "field 'item_id'", "'01' is the same number as id '1'"]


def d3_items_txt_duplicate_id(root):
    d = datafiles.d3(root)
    edits.append_line(d / "items.txt", "<a_99>\tNot Dracula\t2")
    return d, ["items.txt:11", "'2' is listed twice", "line 3"]


def d3_item_json_duplicate_field(root):
    d = datafiles.d3(root)
    objects = [f'"{i}": {{"title": {json.dumps(t)}, "brand": "Acme", "categories": ""}}'
               for i, t in enumerate(datafiles.TITLES)]
    objects[2] = '"2": {"title": "Dracula", "brand": "Acme", "title": "Carmilla"}'
    (d / "item.json").write_text("{\n" + ",\n".join(objects) + "\n}")
    return d, ["item.json:4", "key 'title' appears twice"]


def d3_item_json_title_not_a_string(root):
    d = datafiles.d3(root)
    (d / "items.txt").unlink()
    data = {str(i): {"title": t} for i, t in enumerate(datafiles.TITLES)}
    data["4"]["title"] = ["The", "Hobbit"]
    (d / "item.json").write_text(json.dumps(data, indent=1))
    return d, ["item.json:", "key '4'", "field 'title'", "expected a string"]


def d3_inline_titles_disagree(root):
    d = datafiles.d3(root)
    (d / "items.txt").unlink()
    (d / "item.json").unlink()
    valid = (d / "valid.csv").read_text().split("\n")
    assert any(',Dracula,"' in v for v in valid)  # item 2 is a target titled 'Dracula' earlier
    valid.append('u9,"[]",Not Dracula,"[1]",2,"[]",<a_1>')
    (d / "valid.csv").write_text("\n".join(v for v in valid if v) + "\n")
    return d, ["valid.csv:", "field 'item_title'", "one title per item"]


def d3_nul_in_csv(root):
    d = datafiles.d3(root)
    raw = (d / "valid.csv").read_bytes().split(b"\n")
    raw[2] = raw[2].replace(b"u0", b"u\x000", 1)
    (d / "valid.csv").write_bytes(b"\n".join(raw))
    return d, ["valid.csv:3", "NUL"]


def d3_unterminated_history_quote(root):
    d = datafiles.d3(root)
    edits.set_line(d / "valid.csv", 2, "u0,\"['Dune', 'Emma'],Emma,\"[0]\",1,\"[]\",<a_1>")
    return d, ["valid.csv:2", "field 'history_item_title'"]


# ------------------------------------------------------------------ Amazon Reviews 2023 (JSON Lines)
def _jsonl(d, name, number, text):
    edits.set_line(d / name, number, text)


def amazon_duplicate_title_key(root):
    d = datafiles.amazon2023(root, gz=False)
    _jsonl(d, "meta_Books.jsonl", 3, '{"parent_asin": "P2", "title": "Dracula", "title": "Frankenstein"}')
    return d, ["meta_Books.jsonl:3", "key 'title' appears twice"]


def amazon_infinity_timestamp(root):
    d = datafiles.amazon2023(root, gz=False)
    _jsonl(d, "Books.jsonl", 2, '{"user_id": "u0", "parent_asin": "P7", "timestamp": Infinity}')
    return d, ["Books.jsonl:2", "non-standard JSON value Infinity"]


def amazon_overflowing_timestamp(root):
    d = datafiles.amazon2023(root, gz=False)
    _jsonl(d, "Books.jsonl", 4, '{"user_id": "u0", "parent_asin": "P7", "timestamp": 1e999}')
    return d, ["Books.jsonl:4", "field 'timestamp'", "finite"]


def amazon_deeply_nested_line(root):
    d = datafiles.amazon2023(root, gz=False)
    _jsonl(d, "meta_Books.jsonl", 2, '{"parent_asin": "P1", "title": "Emma", "x": ' + "[" * 5000 + "]" * 5000 + "}")
    return d, ["meta_Books.jsonl:2", "nested more than"]


def amazon_item_listed_twice_with_other_title(root):
    d = datafiles.amazon2023(root, gz=False)
    edits.append_line(d / "meta_Books.jsonl", '{"parent_asin": "P2", "title": "Carmilla"}')
    return d, ["meta_Books.jsonl:11", "field 'title'", "line 3"]


def amazon_escaped_nul(root):
    d = datafiles.amazon2023(root, gz=False)
    _jsonl(d, "meta_Books.jsonl", 4, '{"parent_asin": "P3", "title": "Belo\\u0000ved"}')
    return d, ["meta_Books.jsonl:4", "NUL"]


def amazon_gzip_bomb(root):
    d = datafiles.amazon2023(root, gz=True)
    (d / "Books.jsonl.gz").write_bytes(gzip.compress(b" " * (8 << 20)))
    return d, ["Books.jsonl.gz", "decompression bomb"]


def amazon_gzip_nul(root):
    d = datafiles.amazon2023(root, gz=True)
    lines = gzip.decompress((d / "Books.jsonl.gz").read_bytes()).split(b"\n")
    lines[1] = lines[1].replace(b'"x"', b'"\x00"')
    (d / "Books.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines)))
    return d, ["Books.jsonl.gz:2", "NUL"]


def amazon_meta_fifo(root):
    d = datafiles.amazon2023(root, gz=False)
    (d / "meta_Books.jsonl").unlink()
    os.mkfifo(d / "meta_Books.jsonl")
    return d, ["meta_Books.jsonl", "FIFO"]


def amazon_csv_infinite_timestamp(root):
    d = root / "amazoncsv"
    datafiles.write(d / "Books.csv", "user_id,parent_asin,rating,timestamp\nu0,P1,5,1000\nu0,P2,5,inf\n")
    datafiles.write(d / "meta_Books.jsonl", '{"parent_asin": "P1", "title": "Emma"}\n')
    return d, ["Books.csv:3", "field 'timestamp'", "finite"]


def amazon_csv_gzip_bomb(root):
    d = root / "amazoncsv"
    datafiles.write(d / "Books.csv.gz", gzip.compress(b"user_id,parent_asin,rating,timestamp\n" + b"\n" * (8 << 20)))
    datafiles.write(d / "meta_Books.jsonl", '{"parent_asin": "P1", "title": "Emma"}\n')
    return d, ["Books.csv.gz", "decompression bomb"]


# ------------------------------------------------------------------ GroupLens ml-100k.zip
def zip_bomb(root):
    return edits.grouplens_zip(root, b"1\t2\t4\t100\n" * (2 << 20)), ["ml-100k.zip!ml-100k/u.data", "decompression bomb"]


def zip_encrypted(root):
    path = edits.grouplens_zip(root)
    edits.patch_zip_headers(path, 6, 8, b"\x01\x00")  # general purpose flag bit 0: encrypted
    return path, ["ml-100k.zip!ml-100k/u.data", "encrypted"]


def zip_unsupported_compression(root):
    path = edits.grouplens_zip(root)
    edits.patch_zip_headers(path, 8, 10, b"\x62\x00")  # method 98 (PPMd)
    return path, ["ml-100k.zip!ml-100k/u.data", "compression method 98 is not supported"]


def zip_duplicate_item_id(root):
    path = datafiles.grouplens_zip(root)
    with zipfile.ZipFile(path) as archive:
        data, item = archive.read("ml-100k/u.data"), archive.read("ml-100k/u.item")
    lines = item.split(b"\n")
    lines[3] = b"2|" + lines[3].split(b"|", 1)[1]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-100k/u.data", data)
        archive.writestr("ml-100k/u.item", b"\n".join(lines))
    return path, ["ml-100k.zip!u.item:4", "'2' is listed twice"]


def zip_infinite_timestamp(root):
    data = "".join(f"{u[1:]}\t{i + 1}\t4\t{t}\n" for u, i, t in datafiles.rows()).replace("\t1000000\n", "\tinf\n", 1)
    return edits.grouplens_zip(root, data.encode()), ["ml-100k.zip!u.data:1", "field 'timestamp'", "finite"]


def grouplens_dir_fifo(root):
    d = root / "ml"
    datafiles.write(d / "u.item", "2|Dune|||x|" + "|".join(["0"] * 19) + "\n")
    os.mkfifo(d / "u.data")
    return d, ["u.data", "FIFO"], ["--format", "grouplens"]


def zip_is_a_fifo(root):
    d = root / "mlz"
    d.mkdir(parents=True)
    os.mkfifo(d / "ml-100k.zip")
    return d, ["ml-100k.zip", "FIFO"], ["--format", "grouplens"]


CORPUS = [
    unterminated_quote_swallows_next_row, unterminated_quote_at_end_of_file, text_after_closing_quote,
    row_with_too_few_fields, nul_byte_in_title, infinite_timestamp, overflowing_timestamp, nan_timestamp,
    ids_01_and_1_collide, interaction_id_spelled_differently, fifo_items_csv,
    recbole_duplicate_item_id, recbole_ids_01_and_1, recbole_unterminated_quote, recbole_nul_in_interactions,
    recbole_minus_infinity_timestamp, recbole_fifo_inter, recbole_item_file_is_a_device,
    duplicate_json_key_replaces_a_title, json_keys_01_and_1, json_nan_title, json_escaped_nul_in_title,
    json_nested_too_deep, json_nested_beyond_recursion_limit, json_title_not_a_string,
    window_infinite_timestamp, window_unterminated_quote,
    d3_items_txt_ids_01_and_1, d3_items_txt_duplicate_id, d3_item_json_duplicate_field,
    d3_item_json_title_not_a_string, d3_inline_titles_disagree, d3_nul_in_csv, d3_unterminated_history_quote,
    amazon_duplicate_title_key, amazon_infinity_timestamp, amazon_overflowing_timestamp,
    amazon_deeply_nested_line, amazon_item_listed_twice_with_other_title, amazon_escaped_nul,
    amazon_gzip_bomb, amazon_gzip_nul, amazon_meta_fifo, amazon_csv_infinite_timestamp, amazon_csv_gzip_bomb,
    zip_bomb, zip_encrypted, zip_unsupported_compression, zip_duplicate_item_id, zip_infinite_timestamp,
    grouplens_dir_fifo, zip_is_a_fifo,
]


class _Blocked(Exception):
    pass


def _alarm(signum, frame):
    raise _Blocked("the reader blocked (a FIFO opened?)")


@pytest.mark.parametrize("case", CORPUS, ids=[c.__name__ for c in CORPUS])
def test_malformed_input_is_refused_in_one_line(tmp_path, capsys, case):
    dataset, fragments, *extra = case(tmp_path / "src")
    out = tmp_path / "outputs" / "prepared"
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)  # a FIFO that is opened blocks forever: fail instead of hanging CI
    try:
        code = main(["data", "prepare", "--dataset", str(dataset), "--out", str(out), *(extra[0] if extra else [])])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.strip().split("\n")
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("softrec: error: ")
    assert "Traceback" not in captured.err and captured.out == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()


def test_every_case_written_is_in_the_corpus():
    """A case defined but left out of CORPUS would never run (the old check, len(CORPUS) >= 40, could
    not notice); each is listed once."""
    import inspect

    written = {name for name, f in globals().items() if inspect.isfunction(f) and f.__module__ == __name__
               and not name.startswith(("_", "test_")) and list(inspect.signature(f).parameters) == ["root"]}
    assert sorted(c.__name__ for c in CORPUS) == sorted(written)
