"""``python -m data_prep download-harvard OUT``: fetch the Harvard Whole Brain Atlas slices over HTTP.

The atlas (AANLIB, Keith A. Johnson and J. Alex Becker, http://www.med.harvard.edu/aanlib/) is a
copyrighted educational resource with no open-data licence: download it for your own research and
development only, never redistribute it. This command writes exactly the atlas tree that
``python -m data_prep harvard OUT ...`` reads::

    OUT/cases/case<N>/<series>/<NNN>.gif      e.g. OUT/cases/case2/ct1/010.gif

URL structure (what public download scripts for the atlas use; the server itself could not be
reached from the machine this was written on, so the base URL is an option)::

    <base>/cases/case<N>/<series>/<NNN>.gif   base = http://www.med.harvard.edu/AANLIB (default)

``<series>`` is a modality code and a number: ``mr1``..``mr4`` (MRI), ``ct1``/``ct2`` (CT),
``tc1`` (Tc-99m SPECT), ``tl1`` (Tl-201 SPECT), ``dg1`` (FDG PET); ``<NNN>`` is the slice number,
zero-padded to 3 digits. A few newer cases store PNG slices (``--ext png``). The atlas's HTML
viewer pages (``case<N>/<mrX>-<tcY>/<NNN>.html``) only embed these images, so they are not used.

Which series to fetch comes from the series map (``configs/atlas_series.yaml``, read through
:func:`data_prep.harvard.load_series_map`, or ``--series-map``): for every case and every pair type
``A-B`` of the map, the first series of modality A that the server has is fetched slice by slice,
with the same slice of the first series of modality B that has it; a slice whose partner is
missing is skipped (the reader needs both). Which slices a series has is learned from the
server's folder listing when it gives one (an HTML index of ``NNN.gif`` links), else by probing
slice numbers upwards from 0 until ``--max-misses`` numbers in a row are missing. A folder URL
answering 404 marks a series as absent without probing.

Safety and politeness:

- **resumable**: a file already in OUT that decodes is not fetched again; a stale temporary file
  from a killed run is removed;
- **retries** with exponential back-off (``--retries``, ``--backoff``; ``Retry-After`` is honoured
  up to a minute) on connection errors, timeouts, 429 and 5xx;
- **rate limit**: at most ``--rate`` requests per second (default 2), one at a time;
- every file is **decoded** with :func:`pipeline.io.read_image` (in a temporary folder outside
  OUT) before it is kept, and written with :func:`pipeline.io.atomic_write_bytes`, so OUT only ever
  holds complete, decodable slices; a file that stays corrupt is refused and reported;
- **no path can escape OUT**: output names are built from validated parts only (case ids and
  series names of letters and digits, slice numbers as integers); names in a server listing with
  ``..``, ``/``, ``\\``, a scheme or odd characters are refused with a warning.

The exit status is 0 when every wanted file is in OUT, 1 when some could not be fetched (re-run to
resume), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

from data_prep.datalist import DataPrepError
from pipeline.io import ImageReadError, atomic_write_bytes, read_image
from pipeline.outputs import OutputLock

if TYPE_CHECKING:
    from tqdm import tqdm

    from data_prep.harvard import SeriesMap

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_CASES",
    "USER_AGENT",
    "AtlasClient",
    "DownloadAborted",
    "DownloadReport",
    "parse_listing",
    "download_atlas",
    "add_arguments",
    "run",
]

#: Where the atlas lives (the server treats the path case-insensitively; its pages use AANLIB).
DEFAULT_BASE_URL = "http://www.med.harvard.edu/AANLIB"

#: The cases of the public flattened CT-MRI, PET-MRI and SPECT-MRI pair sets (see
#: ../shared/data/README.md): CT-MRI 2 20 28 32 33 34 37 41; PET-MRI 25 30 41; SPECT-MRI 3 4 10
#: 11 15 18 21 22 25 28 29 35 40.
DEFAULT_CASES = ("2", "3", "4", "10", "11", "15", "18", "20", "21", "22", "25", "28", "29", "30", "32",
                 "33", "34", "35", "37", "40", "41")

USER_AGENT = "ssim-fusion-data-prep/0.1 (research download of the Whole Brain Atlas; rate limited)"

#: A slice GIF is ~10-70 kB; anything above this is not a slice and is refused unread.
MAX_BYTES = 16 * 1024 * 1024

_NAME = re.compile(r"^[A-Za-z0-9]+$")  # case ids and series folders
_SLICE_FILE = re.compile(r"^(\d{1,4})\.(gif|png)$", re.IGNORECASE)
#: characters a listing link may hold: no backslash, percent-encoding, spaces or quotes
_SAFE_HREF = re.compile(r"^[A-Za-z0-9._/:~-]+$")
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_MISSING_STATUS = {404, 410}


class DownloadAborted(DataPrepError):
    """Too many files failed in a row (the server or the connection is down): the run stops."""


class _Missing(Exception):
    """The server says the resource does not exist (404/410)."""


class AtlasClient:
    """A polite HTTP GET client: one request at a time, rate limited, retried with back-off.

    Args:
        rate: at most this many requests per second (> 0).
        retries: extra attempts after a transient failure (connection error, timeout, 429, 5xx).
        backoff: first back-off delay in seconds; doubled after every failed attempt.
        timeout: socket timeout per request, seconds.
        sleep: the sleep function (tests may replace it).
    """

    def __init__(self, rate: float = 2.0, retries: int = 4, backoff: float = 1.0, timeout: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not rate > 0:
            raise DataPrepError(f"--rate must be positive (requests per second), got {rate}")
        if retries < 0 or backoff < 0:
            raise DataPrepError("--retries and --backoff must not be negative")
        self.interval = 1.0 / rate
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._sleep = sleep
        self._last = -float("inf")
        self.requests = 0

    def _wait_turn(self) -> None:
        delay = self._last + self.interval - time.monotonic()
        if delay > 0:
            self._sleep(delay)
        self._last = time.monotonic()

    def get(self, url: str) -> tuple[bytes, str] | None:
        """GET ``url``.

        Returns:
            ``(body, content_type)``, or ``None`` when the server answers 404/410 (no such file).

        Raises:
            DataPrepError: a non-transient HTTP error (e.g. 403), a body over :data:`MAX_BYTES`, or
                a transient failure that outlasted every retry; the message names the URL.
        """
        last_error = "no attempt"
        for attempt in range(self.retries + 1):
            self._wait_turn()
            self.requests += 1
            retry_after = 0.0
            try:
                return self._get_once(url)
            except _Missing:
                return None
            except urllib.error.HTTPError as err:
                if err.code not in _RETRY_STATUS:
                    raise DataPrepError(f"{url}: the server answered HTTP {err.code} {err.reason}. "
                                        "Check --base-url, or try again later") from err
                last_error = f"HTTP {err.code} {err.reason}"
                retry_after = _retry_after_seconds(err.headers.get("Retry-After") if err.headers else None)
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                    OSError) as err:
                last_error = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            if attempt < self.retries:
                self._sleep(max(self.backoff * 2 ** attempt, retry_after))
        raise DataPrepError(f"{url}: failed after {self.retries + 1} attempts ({last_error}). "
                            "Check your connection or --base-url, then re-run to resume")

    def _get_once(self, url: str) -> tuple[bytes, str]:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                length = response.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > MAX_BYTES:
                    raise DataPrepError(f"{url}: {length} bytes is too large for an atlas slice; refused")
                body = response.read(MAX_BYTES + 1)
                if len(body) > MAX_BYTES:
                    raise DataPrepError(f"{url}: more than {MAX_BYTES} bytes is too large for an atlas "
                                        "slice; refused")
                if length is not None and length.isdigit() and len(body) != int(length):
                    raise http.client.IncompleteRead(body, int(length) - len(body))
                return body, response.headers.get_content_type()
        except urllib.error.HTTPError as err:
            if err.code in _MISSING_STATUS:
                raise _Missing(url) from err
            raise


def _retry_after_seconds(value: str | None) -> float:
    if value and value.strip().isdigit():
        return min(float(value.strip()), 60.0)
    return 0.0


class _LinkCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag.lower() == "a":
            self.links.extend(v for k, v in attrs if k.lower() == "href" and v)


def parse_listing(html: str, folder_url: str) -> tuple[dict[int, str], list[str]]:
    """Slice files named in a folder listing (an HTML index), and the names refused.

    A link is a slice when, resolved against ``folder_url``, it names a file directly inside that
    folder on the same server and the name is ``<digits>.gif`` or ``<digits>.png``. Links that end
    like an image but would leave the folder (``..``, ``/``, ``\\``, another host, odd or
    percent-encoded characters) are refused; other links (sorting links, the parent folder) are
    ignored.

    Args:
        html: the listing page.
        folder_url: its URL, ending in ``/``.

    Returns:
        ``{slice number: file name}`` and the refused link texts.
    """
    collector = _LinkCollector()
    collector.feed(html)
    base = urllib.parse.urlsplit(folder_url)
    base_path = base.path.lower()
    slices: dict[int, str] = {}
    refused: list[str] = []
    for href in collector.links:
        if not re.search(r"\.(gif|png)$", urllib.parse.unquote(href.split("?", 1)[0].split("#", 1)[0]),
                         re.IGNORECASE):
            continue  # not a slice link (sort links, the parent folder, HTML pages)
        target = urllib.parse.urlsplit(urllib.parse.urljoin(folder_url, href))
        rest = target.path[len(base_path):] if target.path.lower().startswith(base_path) else ""
        safe_text = _SAFE_HREF.match(href) and ".." not in href.split("/")
        same_server = (target.scheme, target.netloc.lower()) == (base.scheme, base.netloc.lower())
        inside = same_server and "/" not in rest
        match = _SLICE_FILE.match(rest)
        if not (safe_text and inside and match) or target.query or target.fragment:
            refused.append(href)
            continue
        slices.setdefault(int(match.group(1)), rest)
    return slices, refused


@dataclass
class DownloadReport:
    """What a download run did.

    Attributes:
        fetched: files downloaded and kept.
        present: files already in OUT (decoded fine) and not fetched again.
        skipped: slices left out because their partner is missing on the server.
        refused: listing entries or files refused (unsafe names, undecodable content), with why.
        failed: files that could not be fetched after all retries, with why.
        notes: series or cases not found on the server.
        aborted: why the run stopped early (``""`` when it ran to the end).
    """

    fetched: int = 0
    present: int = 0
    skipped: int = 0
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    aborted: str = ""


#: This many failed files in a row mean the server or the connection is down: stop, resume later.
MAX_FAILURES_IN_A_ROW = 5


class _AtlasDownload:
    """One download run over a set of cases (the logic behind :func:`download_atlas`)."""

    def __init__(self, out: Path, base_url: str, client: AtlasClient, series_map: SeriesMap, ext: str,
                 max_misses: int, max_slice: int, progress: tqdm) -> None:
        self.out = out.resolve()
        self.cases_dir = self.out / "cases"
        self.base = base_url.rstrip("/")
        self.client = client
        self.series_map = series_map
        self.ext = ext
        self.max_misses = max_misses
        self.max_slice = max_slice
        self.progress = progress
        self.report = DownloadReport()
        self._failures_in_a_row = 0
        self._listings: dict[tuple[str, str], dict[int, str] | None | bool] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="atlas-check-")  # decoding happens outside OUT

    # -- paths and URLs ---------------------------------------------------------------------------

    def local_path(self, case: str, series: str, name: str) -> Path:
        path = (self.cases_dir / f"case{case}" / series / name).resolve()
        if self.out not in path.parents or not _SLICE_FILE.match(path.name):
            raise DataPrepError(f"refusing to write {path}: it is not a slice file inside {self.out}")
        return path

    def url(self, case: str, series: str, name: str = "") -> str:
        return f"{self.base}/cases/case{case}/{series}/{name}"

    # -- series discovery -------------------------------------------------------------------------

    def listing(self, case: str, series: str) -> dict[int, str] | None | bool:
        """The series' slice files from the server's folder listing; ``False``: the folder is absent
        (404); ``None``: no usable listing (probe instead)."""
        key = (case, series)
        if key not in self._listings:
            folder = self.url(case, series)
            try:
                got = self.client.get(folder)
            except DataPrepError:
                got = b"", ""  # e.g. 403 for a folder without an index: it may still hold files
            if got is None:
                self._listings[key] = False
            else:
                body, ctype = got
                slices, refused = ({}, []) if "html" not in ctype else \
                    parse_listing(body.decode("utf-8", "replace"), folder)
                for href in refused:
                    msg = f"{folder}: listing entry {href!r} refused (unsafe or unexpected file name)"
                    self.report.refused.append(msg)
                    print(f"warning: {msg}", file=sys.stderr)
                self._listings[key] = slices or None
        return self._listings[key]

    def names(self, n: int, listed: dict[int, str] | None) -> tuple[str, str]:
        """(remote, local) file names of slice ``n``: the listing's spelling for the URL, and
        ``NNN.<ext>`` (3 digits, lower-case ending) in OUT, as the reader expects."""
        remote = listed[n] if listed and n in listed else f"{n:03d}.{self.ext}"
        return remote, f"{n:03d}{Path(remote).suffix.lower()}"

    # -- fetching one file ------------------------------------------------------------------------

    def have(self, case: str, series: str, name: str) -> bool:
        path = self.local_path(case, series, name)
        if not path.is_file():
            return False
        try:
            read_image(path)
            return True
        except ImageReadError:
            return False  # damaged by something else: fetch it again (replaced atomically)

    def fetch(self, case: str, series: str, name: str) -> bytes | None:
        """Download and decode one slice; ``None`` when the server has no such file.

        Raises:
            DataPrepError: it cannot be fetched, or it stays undecodable after a second attempt.
        """
        url = self.url(case, series, name)
        for attempt in range(2):  # a corrupt body may be a damaged transfer: one fresh try
            got = self.client.get(url)
            if got is None:
                return None
            data = got[0]
            check = Path(self._tmp.name) / f"check{Path(name).suffix}"
            check.write_bytes(data)
            try:
                read_image(check)
                return data
            except ImageReadError as err:
                problem = str(err).split(": ", 1)[-1]
            finally:
                check.unlink(missing_ok=True)
        raise DataPrepError(f"{url}: the file does not decode as an image ({problem}); refused, not kept")

    def clean_stale(self, case: str, series: str) -> None:
        folder = self.cases_dir / f"case{case}" / series
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):  # left by a killed atomic write
                tmp.unlink(missing_ok=True)

    # -- one case ---------------------------------------------------------------------------------

    def run_case(self, case: str) -> None:
        for pair in self.series_map.pairs:
            mod_a, mod_b = pair.split("-", 1)
            self.run_pair(case, pair, self.series_map.series_of(mod_a), self.series_map.series_of(mod_b))

    def run_pair(self, case: str, pair: str, a_series: list[str], b_series: list[str]) -> None:
        for series in a_series:
            listed = self.listing(case, series)
            if listed is False:
                continue
            self.clean_stale(case, series)
            if self.run_a_series(case, pair, series, listed or None, b_series):
                return  # the first A series the server has wins, as the reader prefers it
        self.report.notes.append(f"case {case}: no {pair.split('-')[0]} series ({', '.join(a_series)}) on "
                                 f"the server, so no {pair} pairs")

    def run_a_series(self, case: str, pair: str, series: str, listed: dict[int, str] | None,
                     b_series: list[str]) -> bool:
        """Fetch the A series slice by slice with partners; True if the series exists at all."""
        numbers = sorted(listed) if listed else range(0, self.max_slice + 1)
        found_any, misses = bool(listed), 0
        partner: list[str | None] = [None]  # B series chosen for this case (first one with a slice)
        for n in numbers:
            remote, local = self.names(n, listed)
            a_data: bytes | None = None
            if listed and not self.partner_possible(case, n, b_series, partner):
                self._no_partner(case, pair, n, b_series)  # known from the listings: A is not fetched
                continue
            if not self.have(case, series, local):
                try:
                    a_data = self.fetch(case, series, remote)
                except DataPrepError as err:
                    self._fail(err)
                    found_any = True
                    continue
                if a_data is None:
                    if listed:
                        self._fail(DataPrepError(f"{self.url(case, series, remote)}: listed by the server "
                                                 "but answers 404; re-run later"))
                        continue
                    misses += 1
                    if misses >= self.max_misses:
                        break
                    continue
            found_any, misses = True, 0
            if not self.ensure_partner(case, pair, n, b_series, partner):
                continue
            if a_data is not None:
                atomic_write_bytes(self.local_path(case, series, local), a_data)
                self.report.fetched += 1
            else:
                self.report.present += 1
            self._ok()
        return found_any

    def ensure_partner(self, case: str, pair: str, n: int, b_series: list[str],
                       partner: list[str | None]) -> bool:
        """Make sure slice ``n`` of a B series is in OUT; True when it is."""
        candidates = [partner[0]] if partner[0] else b_series
        for series in candidates:
            listed = self.listing(case, series)
            if listed is False or (listed and n not in listed):
                continue
            remote, local = self.names(n, listed or None)
            if self.have(case, series, local):
                self.report.present += 1
            else:
                try:
                    data = self.fetch(case, series, remote)
                except DataPrepError as err:
                    self._fail(err)
                    return False
                if data is None:
                    continue
                self.clean_stale(case, series)
                atomic_write_bytes(self.local_path(case, series, local), data)
                self.report.fetched += 1
            partner[0] = series
            self._ok()
            return True
        self._no_partner(case, pair, n, candidates)
        return False

    def partner_possible(self, case: str, n: int, b_series: list[str], partner: list[str | None]) -> bool:
        """False only when the B listings already say that no B series has slice ``n``."""
        for series in [partner[0]] if partner[0] else b_series:
            listed = self.listing(case, series)
            if listed is None or (listed and n in listed):
                return True
        return False

    def _no_partner(self, case: str, pair: str, n: int, candidates: list[str]) -> None:
        self.report.skipped += 1
        self.report.notes.append(f"case {case}: slice {n:03d} has no {pair.split('-')[1]} partner "
                                 f"({', '.join(candidates)}) on the server; skipped")

    def _fail(self, err: DataPrepError) -> None:
        msg = str(err)
        (self.report.refused if "refused" in msg else self.report.failed).append(msg)
        print(f"warning: {msg}", file=sys.stderr)
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise DownloadAborted(f"{self._failures_in_a_row} files failed in a row (last: {msg}); stopping. "
                                  "Check the connection and --base-url, then re-run to resume")

    def _ok(self) -> None:
        self._failures_in_a_row = 0
        self.progress.update(1)


def download_atlas(out: str | os.PathLike, cases: Sequence[str], base_url: str = DEFAULT_BASE_URL,
                   client: AtlasClient | None = None, series_map: SeriesMap | None = None, ext: str = "gif",
                   max_misses: int = 30, max_slice: int = 999,
                   show_progress: bool | None = None) -> DownloadReport:
    """Fetch the atlas slices of ``cases`` into ``OUT/cases/case<N>/<series>/<NNN>.<ext>``.

    Args:
        out: output folder (created; files already there and decodable are kept).
        cases: case ids, letters and digits (``"2"``, ``"NN1"``); a leading ``case`` is accepted.
        base_url: the atlas root (``<base>/cases/case<N>/...``), http or https.
        client: the HTTP client (rate limit, retries); a default :class:`AtlasClient` when ``None``.
        series_map: a :class:`data_prep.harvard.SeriesMap`; ``configs/atlas_series.yaml`` when ``None``.
        ext: file ending used when probing slice numbers (``gif`` or ``png``).
        max_misses: stop probing a series after this many missing slice numbers in a row.
        max_slice: highest slice number probed.
        show_progress: tqdm bar; ``None`` shows it only on a terminal.

    Returns:
        the :class:`DownloadReport`.

    Raises:
        DataPrepError: a bad argument (case id, base URL, ext), or OUT is a file.
        pipeline.outputs.OutputLockedError: another download is writing OUT.
    """
    from tqdm import tqdm

    from data_prep.harvard import load_series_map

    case_ids = [_check_case(c) for c in cases]
    base_url = _check_base_url(base_url)
    if ext not in ("gif", "png"):
        raise DataPrepError(f"--ext must be gif or png, got {ext!r}")
    if max_misses < 1 or max_slice < 0:
        raise DataPrepError("--max-misses must be at least 1 and --max-slice not negative")
    series_map = series_map or load_series_map(None)
    bad = [s for s in series_map.series if not _NAME.fullmatch(s)]
    if bad:
        raise DataPrepError(f"{series_map.origin}: series names {bad} must be letters and digits only "
                            "(they become folder names)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataPrepError(f"{out}: exists and is not a folder. Choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    client = client or AtlasClient()
    disable = None if show_progress is None else not show_progress  # None: only on a terminal
    # one download per OUT at a time (a second one stops at once; a killed one's lock is taken over)
    with OutputLock(out, "download-harvard"), \
            tqdm(desc="atlas slices", unit="file", disable=disable, file=sys.stderr) as bar:
        job = _AtlasDownload(out, base_url, client, series_map, ext, max_misses, max_slice, bar)
        try:
            for case in case_ids:
                bar.set_postfix_str(f"case {case}")
                job.run_case(case)
        except DownloadAborted as err:
            job.report.aborted = str(err)
        finally:
            job._tmp.cleanup()
    return job.report


def _check_case(case: str) -> str:
    case = str(case).strip()
    case = case[4:] if case.lower().startswith("case") else case
    if not _NAME.fullmatch(case):
        raise DataPrepError(f"case id {case!r} must be letters and digits only (e.g. 2, 41, NN1)")
    return case


def _check_base_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DataPrepError(f"--base-url {url!r} must be an http:// or https:// URL, e.g. {DEFAULT_BASE_URL}")
    if parts.query or parts.fragment:
        raise DataPrepError(f"--base-url {url!r} must not have a query or fragment")
    return url.rstrip("/")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m data_prep download-harvard``."""
    parser.add_argument("out", metavar="OUT", help="output folder: receives cases/case<N>/<series>/<NNN>.gif")
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), metavar="N",
                        help="case ids (default: the 21 cases of the public CT/PET/SPECT-MRI pair sets)")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL,
                        help="atlas root; files are <base>/cases/case<N>/<series>/<NNN>.gif "
                             f"(default {DEFAULT_BASE_URL})")
    parser.add_argument("--series-map", default=None, metavar="FILE",
                        help="YAML series mapping (default: configs/atlas_series.yaml)")
    parser.add_argument("--rate", type=float, default=2.0,
                        help="at most this many requests per second (default 2)")
    parser.add_argument("--retries", type=int, default=4, help="retries of a failed request (default 4)")
    parser.add_argument("--backoff", type=float, default=1.0,
                        help="first retry delay in seconds, doubled each retry (default 1)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument("--ext", choices=("gif", "png"), default="gif",
                        help="file type probed when the server gives no listing (default gif)")
    parser.add_argument("--max-misses", type=int, default=30,
                        help="stop probing a series after this many missing slice numbers in a row "
                             "(default 30)")
    parser.add_argument("--max-slice", type=int, default=999,
                        help="highest slice number probed (default 999)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the download; returns 0 when complete, 1 when some files could not be fetched."""
    from data_prep.harvard import load_series_map

    start = time.perf_counter()
    client = AtlasClient(rate=args.rate, retries=args.retries, backoff=args.backoff, timeout=args.timeout)
    report = download_atlas(args.out, args.cases, base_url=args.base_url, client=client,
                            series_map=load_series_map(args.series_map), ext=args.ext,
                            max_misses=args.max_misses, max_slice=args.max_slice,
                            show_progress=False if args.no_progress else None)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{args.out}: {report.fetched} files fetched, {report.present} already present, "
          f"{report.skipped} slices skipped (no partner), {len(report.refused)} refused, "
          f"{len(report.failed)} failed; {client.requests} requests in {time.perf_counter() - start:.1f} s")
    if report.aborted:
        print(f"error: {report.aborted}", file=sys.stderr)
        return 1
    if report.failed or any("not kept" in r for r in report.refused):
        print("error: some files could not be fetched (see the warnings above); re-run the same command "
              "to resume", file=sys.stderr)
        return 1
    return 0
