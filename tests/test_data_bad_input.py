"""The bad-input corpus: each malformed file -> exit 2, one stderr line naming file and line/field,
no traceback, and nothing left where --out would have been."""

from __future__ import annotations

import gzip
import json

import pytest
from fixtures import datafiles

from softrec.cli import main


def _replace(path, old, new):
    path.write_text(path.read_text(encoding="utf-8").replace(old, new, 1), encoding="utf-8")


def _lines(path, edit):
    lines = path.read_text(encoding="utf-8").split("\n")
    edit(lines)
    path.write_text("\n".join(lines), encoding="utf-8")


def missing_column(root):
    d = datafiles.recbole(root)
    _lines(d / "tiny.inter", lambda ls: ls.__setitem__(0, ls[0].replace("\ttimestamp:float", "")))
    return d, ["tiny.inter:1", "missing column 'timestamp'"]


def wrong_delimiter(root):
    d = datafiles.generic(root)
    (d / "interactions.csv").write_text((d / "interactions.csv").read_text().replace(",", ";"))
    return d, ["interactions.csv:1", "semicolons", "wrong delimiter"]


def non_numeric_timestamp(root):
    d = datafiles.generic(root)
    _lines(d / "interactions.csv", lambda ls: ls.__setitem__(2, "u0,b1,yesterday"))
    return d, ["interactions.csv:3", "field 'timestamp'", "'yesterday'"]


def unknown_item_in_window(root):
    d = datafiles.windows(root)
    _lines(d / "train.csv", lambda ls: ls.__setitem__(4, 'u9,"[1, 999]",1000002'))
    return d, ["train.csv:5", "item id 999 is not in id2name4Rec.json"]


def empty_title(root):
    d = datafiles.generic(root)
    _replace(d / "items.csv", '"Emma"', '""')
    return d, ["items.csv:3", "field 'title'", "non-empty title"]


def duplicate_header(root):
    d = datafiles.windows(root)
    _lines(d / "test.csv", lambda ls: ls.__setitem__(0, "user_id,item_ids,user_id,timestamp"))
    return d, ["test.csv:1", "duplicate column 'user_id'"]


def truncated_gzip(root):
    d = datafiles.amazon2023(root, gz=True)
    data = (d / "Books.jsonl.gz").read_bytes()
    (d / "Books.jsonl.gz").write_bytes(data[: len(data) // 2])
    return d, ["Books.jsonl.gz", "truncated or corrupt gzip"]


def non_utf8(root):
    d = datafiles.d3(root)
    data = (d / "valid.csv").read_bytes().split(b"\n")
    data[3] = data[3].replace(b"Dune", b"D\xfcne")
    (d / "valid.csv").write_bytes(b"\n".join(data))
    return d, ["valid.csv:4", "not valid UTF-8"]


def empty_file(root):
    d = datafiles.recbole(root)
    (d / "tiny.item").write_text("")
    return d, ["tiny.item", "empty"]


def window_too_short(root):
    d = datafiles.windows(root)
    _lines(d / "train.csv", lambda ls: ls.__setitem__(2, 'u0,"[5]",1000001'))
    return d, ["train.csv:3", "field 'item_ids'", "at least 2 item ids"]


def truncated_zip(root):
    path = datafiles.grouplens_zip(root)
    path.write_bytes(path.read_bytes()[:200])
    return path, ["ml-100k.zip", "not a readable zip file"]


def invalid_json_line(root):
    d = datafiles.amazon2023(root, gz=False)
    _lines(d / "meta_Books.jsonl", lambda ls: ls.__setitem__(1, '{"parent_asin": "P1", "title": '))
    return d, ["meta_Books.jsonl:2", "not valid JSON"]


def review_without_user(root):
    d = datafiles.amazon2023(root, gz=False)
    _lines(d / "Books.jsonl", lambda ls: ls.__setitem__(3, json.dumps({"parent_asin": "P1", "timestamp": 5})))
    return d, ["Books.jsonl:4", "field 'user_id' missing"]


def gzip_meta_not_utf8(root):
    d = datafiles.amazon2023(root, gz=True)
    (d / "meta_Books.jsonl.gz").write_bytes(gzip.compress(b'{"parent_asin": "P0", "title": "\xff"}\n'))
    return d, ["meta_Books.jsonl.gz:1", "not valid UTF-8"]


def items_txt_missing_field(root):
    d = datafiles.d3(root)
    _lines(d / "items.txt", lambda ls: ls.__setitem__(2, "<a_2>\tDracula"))
    return d, ["items.txt:3", "3 tab-separated fields"]


def bad_id2name_json(root):
    d = datafiles.windows(root)
    (d / "id2name4Rec.json").write_text('{\n "1": "Dune",\n "2": \n}')
    return d, ["id2name4Rec.json:4", "not valid JSON"]


def duplicate_item_id(root):
    d = datafiles.generic(root)
    _lines(d / "items.csv", lambda ls: ls.__setitem__(3, "b0,Again,Someone"))
    return d, ["items.csv:4", "'b0' is listed twice"]


def not_a_list(root):
    d = datafiles.windows(root)
    _lines(d / "test.csv", lambda ls: ls.__setitem__(1, "u0,1 2 3,1000007"))
    return d, ["test.csv:2", "field 'item_ids'", "list of integer ids"]


def extra_field(root):
    d = root / "ml"
    d.mkdir(parents=True)
    datafiles.write(d / "u.data", "1\t2\t4\t100\n1\t3\t4\t101\t9\n")
    datafiles.write(d / "u.item", "2|Dune|||x|" + "|".join(["0"] * 19) + "\n")
    return d, ["u.data:2", "expected 4 fields, found 5"]


def target_not_an_id(root):
    d = datafiles.d3(root)
    text = (d / "test.csv").read_text().split("\n")
    fields = text[1].rsplit(",", 3)
    text[1] = ",".join([fields[0], "item-1", *fields[2:]])
    (d / "test.csv").write_text("\n".join(text))
    return d, ["test.csv:2", "field 'item_id'", "integer item id"]


def unrecognised_directory(root):
    d = root / "stuff"
    datafiles.write(d / "notes.txt", "hello")
    return d, ["stuff", "could not recognise"]


CORPUS = [
    missing_column, wrong_delimiter, non_numeric_timestamp, unknown_item_in_window, empty_title,
    duplicate_header, truncated_gzip, non_utf8, empty_file, window_too_short, truncated_zip,
    invalid_json_line, review_without_user, gzip_meta_not_utf8, items_txt_missing_field,
    bad_id2name_json, duplicate_item_id, not_a_list, extra_field, target_not_an_id,
    unrecognised_directory,
]


@pytest.mark.parametrize("case", CORPUS, ids=[c.__name__ for c in CORPUS])
def test_malformed_input_gives_one_line_and_exit_2(tmp_path, capsys, case):
    dataset, fragments = case(tmp_path / "src")
    out = tmp_path / "outputs" / "prepared"
    code = main(["data", "prepare", "--dataset", str(dataset), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().split("\n")
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("softrec: error: ")
    assert "Traceback" not in captured.err and captured.out == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()
    assert not (tmp_path / "outputs").exists() or list((tmp_path / "outputs").iterdir()) == []


def _case_functions(namespace):
    """Every case written in this module: a public function of one parameter, `root`."""
    import inspect

    return {name for name, f in namespace.items() if inspect.isfunction(f) and f.__module__ == __name__
            and not name.startswith(("_", "test_")) and list(inspect.signature(f).parameters) == ["root"]}


def test_every_case_written_is_in_the_corpus():
    """A case defined but left out of CORPUS would never run (the old check, len(CORPUS) >= 12, could
    not notice); each is listed once."""
    assert sorted(c.__name__ for c in CORPUS) == sorted(_case_functions(globals()))


@pytest.mark.parametrize("argv, fragment", [
    (["--train-size", "0"], "--train-size"),
    (["--k-core", "-1"], "data.k_core"),
    (["--set", "data.ratios=[0.5,0.5,0.5]"], "ratios"),
    (["--format", "parquet"], "unknown format 'parquet'"),
])
def test_bad_options_exit_2(tmp_path, capsys, argv, fragment):
    code = main(["data", "prepare", "--dataset", "demo", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().split("\n")) == 1
    assert not (tmp_path / "o").exists()


def test_unknown_dataset_name_says_where_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SOFTREC_DATA_DIR", str(tmp_path))
    code = main(["data", "prepare", "--dataset", "no-such-set", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path}/no-such-set" in err and "SOFTREC_DATA_DIR" in err
