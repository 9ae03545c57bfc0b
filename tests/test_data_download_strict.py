"""The downloader's stricter side (#17): https only, no downgrade on redirect, pinned sizes and
checksums, incomplete transfers caught, and trust-on-first-use said out loud."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import pytest

from softrec.data import download
from softrec.data.download import RemoteFile, check_url, download_file, verify
from softrec.errors import UserError


@pytest.fixture()
def server(tmp_path):
    """127.0.0.1 server: files from tmp_path/www, plus /redirect (302 to plain http elsewhere) and
    /short (declares more bytes than it sends)."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://203.0.113.7/ml-100k.zip")
                self.end_headers()
                return
            if self.path == "/short":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"only a little")
                self.close_connection = True
                return
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("url", [
    "http://files.grouplens.org/datasets/movielens/ml-100k.zip", "ftp://example.org/x.zip", "file:///etc/passwd",
    "x.zip",
])
def test_only_https_is_fetched(url, tmp_path):
    with pytest.raises(UserError, match="expected an https URL"):
        download_file(RemoteFile("x.zip", (url,)), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("url", ["https://example.org/a", "http://127.0.0.1:8/a", "http://localhost/a"])
def test_https_and_loopback_http_are_accepted(url):
    check_url(url)


def test_every_known_source_is_https():
    for name in (*download.SOURCES, "amazon2023:Toys"):
        for remote in download.source(name).files:
            for url in remote.urls:
                assert url.startswith("https://"), url


def test_ml100k_is_pinned_by_size_sha256_and_md5():
    (remote,) = download.SOURCES["ml-100k"].files
    assert remote.size == 4_924_029 and remote.md5 and len(remote.sha256 or "") == 64


def test_redirect_to_plain_http_is_refused(server, tmp_path):
    url, _ = server
    with pytest.raises(UserError) as err:
        download_file(RemoteFile("f.zip", (f"{url}/redirect",)), tmp_path / "cache", timeout=5)
    assert "not https" in str(err.value) and "\n" not in str(err.value)


def test_incomplete_download_is_an_error(server, tmp_path):
    url, _ = server
    with pytest.raises(UserError, match="incomplete download: 13 of 1,000 bytes"):
        download_file(RemoteFile("f.bin", (f"{url}/short",)), tmp_path / "cache", timeout=5)
    assert not (tmp_path / "cache").exists()


def test_pinned_size_is_checked_before_hashing(tmp_path):
    path = tmp_path / "ml-100k.zip"
    path.write_bytes(b"not the zip")
    remote = download.SOURCES["ml-100k"].files[0]
    with pytest.raises(UserError, match="11 bytes, expected 4,924,029"):
        verify(path, remote)


def test_first_use_is_recorded_and_said(server, tmp_path, capsys):
    url, root = server
    (root / "f.bin").write_bytes(b"v1")
    remote = RemoteFile("f.bin", (f"{url}/f.bin",))
    path = download_file(remote, tmp_path / "cache")
    err = capsys.readouterr().err
    sha = hashlib.sha256(b"v1").hexdigest()
    assert "no published checksum" in err and sha in err and len(err.strip().split("\n")) == 1
    path.write_bytes(b"v2")
    with pytest.raises(UserError, match="recorded in .* at its first download"):
        download_file(remote, tmp_path / "cache")


def test_a_file_placed_by_hand_is_recorded_then_held_to(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "f.bin").write_bytes(b"by hand")
    remote = RemoteFile("f.bin", ("https://example.org/f.bin",))
    download_file(remote, cache)
    assert "recorded its sha256" in capsys.readouterr().err
    assert (cache / ".f.bin.sha256").read_text().strip() == hashlib.sha256(b"by hand").hexdigest()
    (cache / "f.bin").write_bytes(b"swapped")
    with pytest.raises(UserError, match="checksum mismatch"):
        download_file(remote, cache)


def test_a_stale_record_still_guards_a_fresh_download(server, tmp_path):
    """Deleting only the file (as the mismatch message says) keeps the first-seen sha256."""
    url, root = server
    (root / "f.bin").write_bytes(b"v1")
    remote = RemoteFile("f.bin", (f"{url}/f.bin",))
    path = download_file(remote, tmp_path / "cache")
    path.unlink()
    (root / "f.bin").write_bytes(b"tampered upstream")
    with pytest.raises(UserError, match="failed verification"):
        download_file(remote, tmp_path / "cache")
