"""The downloader against a local HTTP server: fetch, verify, cache, and the offline error."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
import zipfile

import pytest
from fixtures import datafiles

from softrec.cli import main
from softrec.data import download
from softrec.data.download import RemoteFile, RemoteSource, download_file, fetch
from softrec.errors import UserError


@pytest.fixture()
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 in a thread; yields (base url, served dir, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    log: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            log.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, log
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_verifies_and_caches(server, tmp_path):
    url, root, log = server
    (root / "f.bin").write_bytes(b"hello world")
    sha = hashlib.sha256(b"hello world").hexdigest()
    remote = RemoteFile("f.bin", (f"{url}/f.bin",), sha256=sha, md5=hashlib.md5(b"hello world").hexdigest())
    path = download_file(remote, tmp_path / "cache")
    assert path.read_bytes() == b"hello world"
    assert download_file(remote, tmp_path / "cache") == path
    assert log.count("/f.bin") == 1  # second call served from the cache
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["f.bin"]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    url, root, _ = server
    (root / "f.bin").write_bytes(b"tampered")
    remote = RemoteFile("f.bin", (f"{url}/f.bin",), sha256="0" * 64)
    with pytest.raises(UserError, match="sha256 checksum mismatch"):
        download_file(remote, tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())


def test_first_download_pins_sha256_and_detects_later_corruption(server, tmp_path):
    url, root, _ = server
    (root / "f.bin").write_bytes(b"v1")
    remote = RemoteFile("f.bin", (f"{url}/f.bin",))
    path = download_file(remote, tmp_path / "cache")
    assert (tmp_path / "cache" / ".f.bin.sha256").read_text().strip() == hashlib.sha256(b"v1").hexdigest()
    path.write_bytes(b"v2")
    with pytest.raises(UserError, match="corrupt or was replaced"):
        download_file(remote, tmp_path / "cache")


def test_mirrors_are_tried_in_order(server, tmp_path):
    url, root, _ = server
    (root / "f.bin").write_bytes(b"data")
    dead = f"http://127.0.0.1:{closed_port()}/f.bin"
    remote = RemoteFile("f.bin", (dead, f"{url}/missing.bin", f"{url}/f.bin"))
    assert download_file(remote, tmp_path / "cache").read_bytes() == b"data"


def test_offline_error_names_url_and_destination(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/ml-100k.zip"
    remote = RemoteFile("ml-100k.zip", (url,))
    with pytest.raises(UserError) as err:
        download_file(remote, tmp_path / "cache" / "ml-100k", timeout=5)
    message = str(err.value)
    assert url in message and str(tmp_path / "cache" / "ml-100k" / "ml-100k.zip") in message
    assert "place it at" in message
    assert not (tmp_path / "cache" / "ml-100k").exists()


def test_prepare_by_name_downloads_then_reads(server, tmp_path, monkeypatch, capsys):
    url, root, log = server
    zipped = datafiles.grouplens_zip(root)
    monkeypatch.setitem(download.SOURCES, "ml-100k", RemoteSource(
        "ml-100k", "test", (RemoteFile("ml-100k.zip", (f"{url}/{zipped.name}",)),)))
    monkeypatch.setenv("SOFTREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SOFTREC_DATA_DIR", str(tmp_path / "empty"))
    argv = ["data", "prepare", "--dataset", "ml-100k", "--out", str(tmp_path / "out"), "--k-core", "0"]
    assert main(argv) == 0
    assert "users" in capsys.readouterr().out
    cached = tmp_path / "cache" / "datasets" / "ml-100k" / "ml-100k.zip"
    assert zipfile.is_zipfile(cached)
    assert main(argv) == 0
    assert log.count(f"/{zipped.name}") == 1
    meta = (tmp_path / "out" / "dataset.json").read_text()
    assert '"movies"' in meta and '"ml-100k.zip"' in meta


def test_download_command_and_names(server, tmp_path, monkeypatch, capsys):
    url, root, _ = server
    datafiles.write(root / "review_categories" / "Toys.jsonl.gz", b"x")
    datafiles.write(root / "meta_categories" / "meta_Toys.jsonl.gz", b"y")
    monkeypatch.setattr(download, "AMAZON_2023_MIRRORS", (url,))
    path = fetch("amazon2023:Toys", cache=tmp_path / "c")
    assert path == tmp_path / "c" / "amazon2023-Toys"
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) == ["Toys.jsonl.gz", "meta_Toys.jsonl.gz"]
    assert download.is_known("amazon2023-video-games") and not download.is_known("amazon2023:../x")
    assert main(["data", "download", "amazon2023:Toys", "--cache", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out.strip() == str(path)
