"""`python -m data_prep download-harvard` against a real HTTP server on 127.0.0.1 serving a small
generated atlas tree: full download, resume, transient 503, corrupt GIF, hostile listing names."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.cli import main
from data_prep.datalist import DataPrepError
from data_prep.download import AtlasClient, download_atlas, parse_listing
from data_prep.harvard import SeriesMap
from pipeline.io import read_image

SERIES_YAML = """\
series: {mr2: MRI, mr1: MRI, ct1: CT, tc1: SPECT, dg1: PET}
pairs: [CT-MRI, PET-MRI, SPECT-MRI]
modalities: {MRI: gray, CT: gray, PET: rgb, SPECT: rgb}
"""
SERIES_MAP = SeriesMap(series={"mr2": "MRI", "mr1": "MRI", "ct1": "CT", "tc1": "SPECT", "dg1": "PET"},
                       pairs=("CT-MRI", "PET-MRI", "SPECT-MRI"),
                       modalities={"MRI": "gray", "CT": "gray", "PET": "rgb", "SPECT": "rgb"})
ROOT = "/AANLIB"
FAST = ["--rate", "1000", "--backoff", "0.001", "--retries", "2", "--max-misses", "3", "--no-progress"]


def gif_bytes(seed: int, colour: bool = False) -> bytes:
    """A 32x32 palette GIF (gray ramp, or a pseudo-colour palette like the atlas's SPECT)."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, 64, size=(32, 32), dtype=np.uint8)
    im = Image.fromarray(index, mode="L").convert("P") if not colour else Image.fromarray(index, mode="P")
    if colour:
        im.putpalette([v for i in range(256) for v in (i * 4 % 256, 255 - i * 4 % 256, i * 2 % 256)])
    buf = io.BytesIO()
    im.save(buf, format="GIF")
    return buf.getvalue()


class AtlasServer:
    """The test atlas: files, folder answers, and injected faults; logs every request path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.folders: dict[str, tuple[int, str]] = {}  # folder path -> (status, html)
        self.fail_once: set[str] = set()
        self.fail_always: set[str] = set()
        self.log: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                path = self.path
                with server.lock:
                    server.log.append(path)
                    once = path in server.fail_once
                    server.fail_once.discard(path)
                if once or path in server.fail_always:
                    self._send(503, b"busy", "text/plain", {"Retry-After": "0"})
                elif path in server.files:
                    self._send(200, server.files[path], "image/gif")
                elif path in server.folders:
                    status, html = server.folders[path]
                    self._send(status, html.encode(), "text/html")
                else:
                    self._send(404, b"not found", "text/plain")

            def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}{ROOT}"

    def requested(self, path: str) -> int:
        return sum(1 for p in self.log if p == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def atlas():
    """case2: ct1 + mr2 slices 1..3 with no folder listing (403: probed); case25: tc1 + mr2 with HTML
    listings, tc1 slice 7 has no MRI partner, and the tc1 listing holds hostile links."""
    srv = AtlasServer()
    for series in ("ct1", "mr2"):
        srv.folders[f"{ROOT}/cases/case2/{series}/"] = (403, "forbidden")
        for n in (1, 2, 3):
            srv.files[f"{ROOT}/cases/case2/{series}/{n:03d}.gif"] = gif_bytes(100 * n + ord(series[0]))
    tc1 = f"{ROOT}/cases/case25/tc1/"
    mr2 = f"{ROOT}/cases/case25/mr2/"
    for n in (5, 6, 7):
        srv.files[f"{tc1}{n:03d}.gif"] = gif_bytes(n, colour=True)
    for n in (5, 6):
        srv.files[f"{mr2}{n:03d}.gif"] = gif_bytes(50 + n)
    hostile = ["../../../../escape.gif", "..%2f..%2fescape2.gif", "http://evil.example/005.gif",
               "/etc/escape3.gif", "sub/006.gif", "..\\escape4.gif"]
    links = ["../", "?C=N;O=D", "005.gif", "006.gif", "007.gif", *hostile]
    body = "".join(f'<a href="{h}">{h}</a>' for h in links)
    srv.folders[tc1] = (200, f"<html><body>{body}</body></html>")
    srv.folders[mr2] = (200, '<a href="005.gif">5</a> <a href="./006.gif">6</a>')
    # every other folder (dg1, mr1, tc1 of case2, ct1 of case25 ...) answers 404: the series is absent
    yield srv
    srv.close()


def run_cli(atlas: AtlasServer, out: Path, tmp_path: Path, *extra: str) -> int:
    series_map = tmp_path / "series.yaml"
    series_map.write_text(SERIES_YAML)
    return main(["download-harvard", str(out), "--cases", "2", "25", "--base-url", atlas.base_url,
                 "--series-map", str(series_map), *FAST, *extra])


def tree(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


EXPECTED = [f"cases/case2/{s}/{n:03d}.gif" for s in ("ct1", "mr2") for n in (1, 2, 3)] + \
           [f"cases/case25/{s}/{n:03d}.gif" for s in ("mr2", "tc1") for n in (5, 6)]


def test_full_download_matches_server_and_feeds_the_reader(atlas, tmp_path, capsys):
    out = tmp_path / "atlas"
    assert run_cli(atlas, out, tmp_path) == 0
    assert tree(out) == sorted(EXPECTED)
    for rel in EXPECTED:  # byte-identical to what the server holds, and decodable
        assert (out / rel).read_bytes() == atlas.files[f"{ROOT}/{rel}"]
        assert read_image(out / rel).shape[:2] == (32, 32)
    assert read_image(out / "cases/case25/tc1/005.gif").ndim == 3  # pseudo-colour palette kept as sent
    err = capsys.readouterr().err
    # hostile listing entries refused by name; nothing escaped OUT
    for name in ("../../../../escape.gif", "..%2f..%2fescape2.gif", "http://evil.example/005.gif",
                 "sub/006.gif", "/etc/escape3.gif"):
        assert f"{name!r} refused" in err
    assert not [p for p in tmp_path.rglob("escape*")]
    assert "slice 007 has no MRI partner" in err
    # tc1/007 was never kept; absent series are one 404 each, never probed file by file
    assert not any(p.startswith(f"{ROOT}/cases/case2/dg1/0") or p.startswith(f"{ROOT}/cases/case25/ct1/0")
                   for p in atlas.log)
    # probing case2/ct1 (no listing): 000 missing, 001-003 found, then --max-misses 3 misses
    assert [p for p in atlas.log if p.startswith(f"{ROOT}/cases/case2/ct1/0")] == \
        [f"{ROOT}/cases/case2/ct1/{n:03d}.gif" for n in range(0, 7)]

    # the tree is exactly what `python -m data_prep harvard` reads
    ds = tmp_path / "ds"
    assert main(["harvard", str(out), str(ds), "--series-map", str(tmp_path / "series.yaml"),
                 "--training-cases", "2", "--test-cases", "25"]) == 0
    datalist = json.loads((ds / "datalist.json").read_text())
    pairs = sorted((e["pair"], e["case"], e["slice"]) for s in ("training", "test") for e in datalist[s])
    assert pairs == [("CT-MRI", "2", 1), ("CT-MRI", "2", 2), ("CT-MRI", "2", 3),
                     ("SPECT-MRI", "25", 5), ("SPECT-MRI", "25", 6)]


def test_resume_after_partial_download(atlas, tmp_path, capsys):
    out = tmp_path / "atlas"
    broken = f"{ROOT}/cases/case2/ct1/003.gif"
    atlas.fail_always.add(broken)
    assert run_cli(atlas, out, tmp_path) == 1  # interrupted: one file keeps failing
    assert "case2/ct1/003.gif: failed after 3 attempts (HTTP 503" in capsys.readouterr().err
    assert atlas.requested(broken) == 3
    have = tree(out)
    assert "cases/case2/ct1/003.gif" not in have and "cases/case2/mr2/003.gif" not in have  # no half pair
    assert "cases/case2/ct1/002.gif" in have

    # a killed run's temp file, and a local file damaged since: both handled on resume
    stale = out / "cases/case2/ct1/.004.gif.abc123.tmp"
    stale.write_bytes(b"partial")
    damaged = out / "cases/case2/mr2/001.gif"
    damaged.write_bytes(damaged.read_bytes()[:40])

    atlas.fail_always.clear()
    atlas.log.clear()
    assert run_cli(atlas, out, tmp_path) == 0
    assert tree(out) == sorted(EXPECTED) and not stale.exists()
    assert damaged.read_bytes() == atlas.files[f"{ROOT}/cases/case2/mr2/001.gif"]
    files_fetched = sorted(p for p in atlas.log if p.endswith(".gif") and p in atlas.files)
    assert files_fetched == sorted([broken, f"{ROOT}/cases/case2/mr2/003.gif",
                                    f"{ROOT}/cases/case2/mr2/001.gif"])
    assert "3 files fetched" in capsys.readouterr().out


def test_transient_503_is_retried(atlas, tmp_path):
    out = tmp_path / "atlas"
    flaky = f"{ROOT}/cases/case2/mr2/002.gif"
    atlas.fail_once.add(flaky)
    assert run_cli(atlas, out, tmp_path) == 0
    assert atlas.requested(flaky) == 2
    assert (out / "cases/case2/mr2/002.gif").read_bytes() == atlas.files[flaky]


def test_corrupt_gif_is_refused_and_not_kept(atlas, tmp_path, capsys):
    out = tmp_path / "atlas"
    bad = f"{ROOT}/cases/case2/ct1/002.gif"
    atlas.files[bad] = atlas.files[bad][:30]  # truncated GIF: header only
    assert run_cli(atlas, out, tmp_path) == 1
    err = capsys.readouterr().err
    assert "case2/ct1/002.gif: the file does not decode as an image" in err and "not kept" in err
    assert atlas.requested(bad) == 2  # one fresh try, then refused
    have = tree(out)
    assert "cases/case2/ct1/002.gif" not in have and "cases/case2/mr2/002.gif" not in have
    assert "cases/case2/ct1/003.gif" in have  # the rest went on
    assert not list(out.rglob("*.tmp"))


def test_parse_listing_accepts_only_plain_slice_names():
    folder = "http://host.test/AANLIB/cases/case3/tc1/"
    html = "".join(f'<a href="{h}">x</a>' for h in [
        "010.gif", "./011.gif", "/AANLIB/cases/case3/tc1/012.GIF",
        "http://host.test/AANLIB/cases/case3/tc1/013.png",
        "../", "?C=M;O=A", "notes.html",
        "../../evil.gif", "..%2fevil.gif", "http://other.test/AANLIB/cases/case3/tc1/014.gif", "sub/015.gif",
        "..\\016.gif", "017.gif?x=1", "a b.gif", "/AANLIB/cases/case3/018.gif", "x.gif"])
    slices, refused = parse_listing(html, folder)
    assert slices == {10: "010.gif", 11: "011.gif", 12: "012.GIF", 13: "013.png"}
    assert refused == ["../../evil.gif", "..%2fevil.gif", "http://other.test/AANLIB/cases/case3/tc1/014.gif",
                       "sub/015.gif", "..\\016.gif", "017.gif?x=1", "a b.gif", "/AANLIB/cases/case3/018.gif",
                       "x.gif"]


@pytest.mark.parametrize("case", ["../2", "2/../../x", "/etc", "2 3", ""])
def test_case_ids_that_could_escape_out_are_rejected(atlas, tmp_path, case, capsys):
    out = tmp_path / "atlas"
    assert main(["download-harvard", str(out), "--cases", case, "--base-url", atlas.base_url, *FAST]) == 2
    assert "must be letters and digits only" in capsys.readouterr().err
    assert not atlas.log


def test_bad_base_url_and_bad_rate(tmp_path):
    with pytest.raises(DataPrepError, match="must be an http:// or https:// URL"):
        download_atlas(tmp_path / "o", ["2"], base_url="file:///etc", series_map=SERIES_MAP)
    with pytest.raises(DataPrepError, match="--rate must be positive"):
        AtlasClient(rate=0)
    assert not (tmp_path / "o").exists()


def test_rate_limit_spaces_requests(atlas):
    client = AtlasClient(rate=40, retries=0)
    start = time.perf_counter()
    for _ in range(5):
        assert client.get(f"{atlas.base_url}/cases/case2/ct1/001.gif") is not None
    assert time.perf_counter() - start >= 4 / 40 - 1e-3  # 5 requests need 4 gaps of 1/rate
    assert client.get(f"{atlas.base_url}/cases/case2/ct1/999.gif") is None  # 404 is "missing", no retry
    assert atlas.requested(f"{ROOT}/cases/case2/ct1/999.gif") == 1


def test_unreachable_server_aborts_quickly(tmp_path, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "atlas"
    start = time.perf_counter()
    rc = main(["download-harvard", str(out), "--cases", "2", "--base-url", f"http://127.0.0.1:{port}/AANLIB",
               "--rate", "1000", "--retries", "0", "--no-progress"])
    assert rc == 1 and time.perf_counter() - start < 10
    assert "files failed in a row" in capsys.readouterr().err
    assert tree(out) == []
