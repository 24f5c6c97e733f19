"""Output folders that hold up: safe names from data, one writer at a time, complete or absent.

Every file the project writes whose name comes from data (a datalist's ``pair``, ``case``,
``slice``, modality names; a file name found in an input folder) is placed by
:func:`output_path`, which accepts only parts that are one plain path component each
(:func:`check_name`) and proves the result is inside its folder. A name is the user's data, not
a path: ``..``, separators, control or bidi characters, a leading dot are refused, never
"cleaned", so two different inputs cannot be silently mapped to one file.

:class:`OutputLock` stops a second process writing the same output folder at once (a lock file
beside the folder with the owner's pid; a lock of a dead process is taken over).
:class:`StagedOutput` builds a run's files in a staging folder beside the output folder and
publishes them at the end, so a failed or killed run leaves the previous output (or nothing),
never a part of a new set; two inputs that would write one output name are an error.
:func:`claim_training_output` is the training's guard against writing into another run's
checkpoints.

Files and folders are created with the user's umask; every rename is followed by an ``fsync`` of
the folder it changed, so a published name survives a power loss.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "OutputError",
    "OutputPathError",
    "OutputLockedError",
    "OutputWriteError",
    "check_name",
    "check_slice",
    "output_path",
    "name_key",
    "check_output_not_in_inputs",
    "file_mode",
    "fsync_dir",
    "write_error",
    "OutputLock",
    "StagedOutput",
    "claim_training_output",
    "LOCK_SUFFIX",
    "STAGING_SUFFIX",
]

#: Suffix of the lock file beside an output folder: ``.<name>.lock``.
LOCK_SUFFIX = ".lock"
#: Suffix of the staging folder beside an output folder: ``.<name>.staging``.
STAGING_SUFFIX = ".staging"
#: Marker inside a staging folder whose files are being moved into the output folder.
_PUBLISHING = ".publishing"

#: Characters never allowed in a name part (separators and what Windows refuses in a file name).
_FORBIDDEN = set('/\\:*?"<>|')
#: Longest name part; file systems allow 255 bytes per component, and a suffix is added.
MAX_NAME = 128


class OutputError(ValueError):
    """An output that cannot be written as asked; the message names the path and the fix."""


class OutputPathError(OutputError):
    """A name from data that cannot be part of an output path, or two inputs with one output name."""


@contextlib.contextmanager
def _directory_flock(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (a directory) for the block; a no-op where the
    platform has no ``flock``."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class OutputLockedError(OutputError):
    """Another live process is writing the same output folder."""


class OutputWriteError(OSError, ValueError):
    """A write that failed in the file system (disk full, read-only, a folder where a file is
    expected ...); the message names the path and what to do. An ``OSError`` with its errno."""


def check_name(value: object, what: str, source: object = "") -> str:
    """``value`` when it can be one component of an output path, else a clear error.

    A safe part is a string of 1..128 printable characters (no control, format or bidi
    characters), in Unicode NFC form, without ``/ \\ : * ? " < > |``, not starting with a dot or a
    space and not ending with a dot or a space (so ``.``, ``..`` and hidden files are impossible).

    Args:
        value: the candidate name (a datalist field, a file stem).
        what: what it is, for the message (e.g. ``"case"``).
        source: where it came from (a datalist path and entry), for the message.

    Returns:
        the name, unchanged.

    Raises:
        OutputPathError: not a string, or not a safe part.
    """
    where = f"{source}: " if source else ""
    if not isinstance(value, str):
        raise OutputPathError(f"{where}{what}={value!r} must be a string (it names output files), "
                              f"got {type(value).__name__}")
    why = _unsafe(value)
    if why:
        raise OutputPathError(f"{where}{what}={value!r} cannot name an output file: {why}. Use letters, "
                              "digits, '_', '-' and '.' (not leading)")
    return value


def _unsafe(value: str) -> str | None:
    if not value:
        return "it is empty"
    if len(value) > MAX_NAME:
        return f"it is longer than {MAX_NAME} characters"
    if unicodedata.normalize("NFC", value) != value:
        return "it is not in Unicode NFC form"
    bad = sorted({c for c in value if c in _FORBIDDEN or not c.isprintable()})
    if bad:
        return f"it holds {', '.join(repr(c) for c in bad)}"
    if value[0] in ". " or value[-1] in ". ":
        return "it starts or ends with a dot or a space"
    return None


def check_slice(value: object, source: object = "") -> int:
    """A slice number from data: a non-negative integer below one million (``bool`` refused).

    Args:
        value: the candidate.
        source: where it came from, for the message.

    Returns:
        the number.

    Raises:
        OutputPathError: anything else.
    """
    where = f"{source}: " if source else ""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**6:
        raise OutputPathError(f"{where}slice={value!r} must be an integer in 0..999999 "
                              "(it names output files)")
    return value


def name_key(relative: str | os.PathLike) -> str:
    """The key two output names collide on: NFC and case-folded (case-insensitive file systems).

    Args:
        relative: a relative output path.

    Returns:
        the comparison key.
    """
    return unicodedata.normalize("NFC", str(relative)).casefold()


def output_path(root: str | os.PathLike, *parts: str, suffix: str = "") -> Path:
    """``root/part/part.../last<suffix>``, every part checked by :func:`check_name`, inside ``root``.

    Args:
        root: the output folder.
        parts: the folder and file name parts, each one component (already validated data).
        suffix: appended to the last part (e.g. ``".png"``).

    Returns:
        the path.

    Raises:
        OutputPathError: a part is unsafe, no part is given, or the result (symbolic links of an
            existing layout resolved) leaves ``root``.
    """
    if not parts:
        raise OutputPathError(f"{root}: an output file needs a name")
    for part in parts:
        check_name(part, "output name part", root)
    if suffix:
        check_name(f"x{suffix}", "suffix", root)
    root = Path(root)
    target = root.joinpath(*parts[:-1], parts[-1] + suffix)
    base = root.resolve()
    full = target.resolve()
    if full != base and base not in full.parents:
        raise OutputPathError(f"{target}: resolves to {full}, outside the output folder {base} (a symbolic "
                              "link in the output folder?). Remove the link or choose another output folder")
    return target


def _resolved(path: str | os.PathLike) -> Path:
    """The absolute, link-free form of ``path``; a NUL character (no file system takes it) is refused."""
    if "\x00" in os.fspath(path):
        raise OutputPathError(f"{os.fspath(path)!r}: a path with a NUL character cannot be an output folder")
    return Path(os.path.abspath(path)).resolve()


def check_output_not_in_inputs(output: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output folder equal to, or inside, an input folder (the run would read its own
    output, or overwrite its inputs).

    Args:
        output: the output folder.
        inputs: the input folders.

    Raises:
        OutputPathError: the output folder is an input folder or below one.
    """
    out = _resolved(output)
    for folder in inputs:
        inp = _resolved(folder)
        if out == inp or inp in out.parents:
            how = "" if out == inp else "inside "
            raise OutputPathError(f"{output}: the output folder is {how}the input folder {folder}; the run "
                                  "would write among its inputs. Choose an output folder outside it")


def file_mode() -> int:
    """The mode of a new regular file under the current umask (``0o666 & ~umask``).

    Returns:
        the permission bits.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no thread-safe way to read it without /proc
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(folder: str | os.PathLike) -> None:
    """``fsync`` a folder, so the renames in it are on disk (a no-op where folders cannot be opened).

    Args:
        folder: the folder.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_FIXES = {
    errno.ENOSPC: "the disk is full: free space or choose another output folder",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another output folder",
    errno.EROFS: "the file system is read-only: choose a writable output folder",
    errno.EACCES: "no permission to write there: choose a writable output folder",
    errno.EPERM: "the operation is not permitted there: choose a writable output folder",
    errno.EISDIR: "a folder is where a file is expected: remove or rename that folder",
    errno.ENOTDIR: "a file is where a folder is expected: remove or rename that file",
    errno.EEXIST: "a file is where a folder is expected: remove or rename that file",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter output folder",
}


def write_error(path: str | os.PathLike, err: OSError) -> OutputWriteError:
    """An :class:`OutputWriteError` naming ``path``, the system's reason and the fix.

    Args:
        path: what was being written.
        err: the error the system raised.

    Returns:
        the clear error (raise it ``from err``).
    """
    fix = _FIXES.get(err.errno or 0, "check the output folder")
    reason = err.strerror or str(err) or type(err).__name__
    return OutputWriteError(err.errno or 0, f"{path}: cannot be written ({reason}); {fix}")


# ---------------------------------------------------------------- the lock


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (``/proc``), to tell a reused pid from the lock's owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    """Whether the lock's owner still runs (an owner on another host counts as alive)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    start = owner.get("start")
    return start is None or _process_start(pid) in (None, start)


class OutputLock:
    """One writer per output folder: the lock file ``.<name>.lock`` beside the folder.

    The file is created exclusively and holds the owner's pid, host and process start time.
    A lock whose owner is dead (killed: no cleanup ran) is taken over; a live owner's lock stops
    this process at once. The lock is removed on :meth:`release` (and leaving the ``with``
    block).

    Args:
        folder: the output folder (it need not exist; its parent is created).
        what: what writes it, for the message (``"inference"``, ``"training"``...).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "a run") -> None:
        self.folder = _resolved(folder)
        self.what = what
        self.path = self.folder.parent / f".{self.folder.name}{LOCK_SUFFIX}"
        self.held = False

    def acquire(self) -> OutputLock:
        """Take the lock.

        Returns:
            this lock.

        Raises:
            OutputLockedError: a live process holds it.
            OutputWriteError: the folder's parent cannot be written.
        """
        if self.held:
            return self
        try:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(self.folder.parent, err) from err
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
              "what": self.what}
        for _ in range(8):
            try:
                created = self._create(json.dumps(me).encode())
            except OSError as err:
                raise write_error(self.path, err) from err
            if created:
                self.held = True
                return self
            owner = self._owner()
            if owner is not None and _alive(owner):
                raise OutputLockedError(
                    f"{self.folder}: {owner.get('what', 'another run')} (pid {owner.get('pid')} on "
                    f"{owner.get('host')}) is writing this output folder; wait for it to finish or "
                    f"choose another folder. If that process is gone, delete {self.path}") from None
            self._take_over(owner)
        raise OutputLockedError(f"{self.folder}: the lock {self.path} keeps changing hands; another run is "
                                "starting on this folder. Try again")

    def _create(self, content: bytes) -> bool:
        """Create the lock file with its content in one step: written to a file of this process first,
        then hard-linked into place (fails when the lock exists). A lock is never seen empty or half
        written, so an unreadable lock is junk, never a racer's lock still being written (treated as
        stale, that once let two racers win).

        Args:
            content: the owner record.

        Returns:
            ``True`` if this process created the lock, ``False`` if it exists.

        Raises:
            OSError: the lock or its temporary file cannot be written.
        """
        fresh = self.path.with_name(f"{self.path.name}.new-{os.getpid()}")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(fresh, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            fresh.unlink(missing_ok=True)

    def _owner(self) -> dict | None:
        """The recorded owner, or ``None`` for a lock that cannot be read (junk)."""
        try:
            owner = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"pid": -1, "host": socket.gethostname()}  # gone meanwhile: retry
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _take_over(self, stale: dict | None) -> None:
        """Remove a stale lock, unless it changed since it was read as stale.

        Take-overs are serialised by an advisory lock (``flock``) on the folder's parent directory,
        released by the kernel if the process dies, so nothing is left behind. Under it the lock is
        read again: only the very lock found stale is removed. Without this, two racers that both
        read the dead owner could each remove a lock, the second one the lock the first had just
        created, and both win.

        Args:
            stale: the owner read from the stale lock (``None``: unreadable).
        """
        with _directory_flock(self.path.parent):
            current = self._owner()
            if current != stale or (current is not None and _alive(current)):
                return  # replaced meanwhile (or gone): the caller looks again
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as err:
                raise write_error(self.path, err) from err

    def release(self) -> None:
        """Remove the lock file (only this process's)."""
        if not self.held:
            return
        self.held = False
        owner = self._owner()
        if owner is not None and owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


# ---------------------------------------------------------------- staging


def _walk_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


class StagedOutput:
    """A run's output files, built in ``.<name>.staging`` beside the output folder, published at the end.

    Use as a context manager; ask :meth:`path` for every file. Leaving the block normally
    publishes: when the output folder is absent or empty (and not the working folder), the
    staging folder is renamed onto it (one atomic step); otherwise the staged files are moved in
    (a marker makes an interrupted move finish at the next run, under the lock). Leaving it with
    an exception removes the staging folder; a staging folder left by a killed run is removed (or
    finished) by the next. The lock (:class:`OutputLock`) is held throughout.

    Args:
        folder: the output folder.
        what: what writes it, for messages.
        inputs: input folders the output folder must not be (or be inside).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "a run",
                 inputs: Sequence[str | os.PathLike] = ()) -> None:
        self.folder = Path(folder)
        _resolved(self.folder)
        check_output_not_in_inputs(self.folder, inputs)
        self.lock = OutputLock(self.folder, what)
        self.staging = self.lock.path.with_name(f".{self.lock.folder.name}{STAGING_SUFFIX}")
        self._names: dict[str, str] = {}
        self.files: list[Path] = []
        self.published = False

    def __enter__(self) -> StagedOutput:
        self.lock.acquire()
        try:
            if self.folder.exists() and not self.folder.is_dir():
                raise OutputError(f"{self.folder}: exists and is not a folder; choose another output folder")
            self.recover()
            self.staging.mkdir()
        except OSError as err:
            self.lock.release()
            raise write_error(self.staging, err) from err
        except BaseException:
            self.lock.release()
            raise
        return self

    def recover(self) -> None:
        """Finish or remove what a killed run left (call with the lock held)."""
        real = self.staging.is_dir() and not self.staging.is_symlink()  # a link is never followed
        if real and (self.staging / _PUBLISHING).exists():
            self._merge()
        if self.staging.exists() or self.staging.is_symlink():
            if self.staging.is_dir() and not self.staging.is_symlink():
                shutil.rmtree(self.staging)
            else:
                self.staging.unlink()

    def path(self, *parts: str, suffix: str = "", source: object = "") -> Path:
        """The staging path of one output file, reserved: a second request for the same name is an error.

        Args:
            parts: name parts (see :func:`output_path`).
            suffix: appended to the last part.
            source: what this file is made from, for the collision message.

        Returns:
            the path in the staging folder (its folder is created).

        Raises:
            OutputPathError: an unsafe part, or a name another input already has.
        """
        target = output_path(self.staging, *parts, suffix=suffix)
        rel = target.relative_to(self.staging).as_posix()
        key = name_key(rel)
        if key in self._names:
            raise OutputPathError(f"{self.folder / rel}: two inputs would write this output file "
                                  f"({self._names[key]} and {source or 'another'}); give them distinct names")
        self._names[key] = str(source or rel)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(target.parent, err) from err
        self.files.append(self.folder / rel)
        return target

    def _check_targets(self) -> None:
        """Before anything moves: every staged file has a place in the output folder."""
        base = self.folder.resolve()
        for src in _walk_files(self.staging):
            rel = src.relative_to(self.staging)
            if rel.name == _PUBLISHING:
                continue
            dst = self.folder / rel
            for parent in [*reversed(rel.parents)][1:]:
                p = self.folder / parent
                if p.is_symlink() or (p.exists() and not p.is_dir()):
                    raise OutputError(f"{p}: is {'a link' if p.is_symlink() else 'a file'} where the output "
                                      "needs a folder; remove or rename it")
            if dst.is_dir() and not dst.is_symlink():
                raise OutputError(f"{dst}: is a folder where an output file is expected; remove or rename it")
            if base not in dst.parent.resolve().parents and dst.parent.resolve() != base:
                raise OutputError(f"{dst}: would be written outside {base}")

    def _merge(self) -> None:
        """Move every staged file into the output folder, then drop the staging folder."""
        marker = self.staging / _PUBLISHING
        if not marker.exists():
            marker.write_bytes(b"")
            fsync_dir(self.staging)
        touched: set[Path] = set()
        for src in _walk_files(self.staging):
            rel = src.relative_to(self.staging)
            if rel.name == _PUBLISHING:
                continue
            dst = self.folder / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            touched.add(dst.parent)
        for d in touched:
            fsync_dir(d)
        shutil.rmtree(self.staging)
        fsync_dir(self.staging.parent)

    def publish(self) -> None:
        """Make the staged files the output (see the class); done once, here or when the block ends.

        Raises:
            OutputError: a pre-existing file, folder or link of the output folder is in the way.
            OutputWriteError: the file system refused a rename.
        """
        if self.published:
            return
        self.published = True
        target = self.lock.folder  # absolute and link-free: beside the staging folder
        cwd = Path.cwd().resolve()
        try:
            fresh = not target.exists() or (target.is_dir() and not any(target.iterdir()))
            if fresh and target != cwd and target not in cwd.parents:
                os.replace(self.staging, target)  # onto an empty folder too: one atomic step
                fsync_dir(target.parent)
            else:
                self._check_targets()
                self._merge()
        except OSError as err:
            raise write_error(self.folder, err) from err

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if kind is None:
                self.publish()
        finally:
            try:
                if self.staging.is_dir() and not (self.staging / _PUBLISHING).exists():
                    shutil.rmtree(self.staging, ignore_errors=True)
            finally:
                self.lock.release()


# ---------------------------------------------------------------- training


_TRAINING_LOCKS: dict[Path, OutputLock] = {}


def claim_training_output(output_dir: str | os.PathLike, ckpt_dir: str | os.PathLike | None = None,
                          resume: bool = False, overwrite: bool = False) -> Path:
    """Guard a training's ``output_dir``: one training at a time, and never over another run's checkpoints.

    The lock is held until the process exits (a killed training leaves a stale lock, taken over
    by the next). In a multi-process run only rank 0 (``$RANK``) takes it.

    Args:
        output_dir: the training's output folder.
        ckpt_dir: its checkpoint folder (default ``output_dir/models``).
        resume: the run continues the checkpoints there (``--resume True``).
        overwrite: the run replaces them (``--overwrite True``): they are deleted now.

    Returns:
        the output folder.

    Raises:
        OutputLockedError: another training writes there.
        OutputError: checkpoints of another run are there and neither ``resume`` nor ``overwrite``.
    """
    import atexit

    out = Path(output_dir)
    _resolved(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; choose another --output_dir")
    ckpt = Path(ckpt_dir) if ckpt_dir is not None else out / "models"
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return out
    lock = _TRAINING_LOCKS.get(_resolved(out))
    if lock is None:
        lock = OutputLock(out, "training").acquire()
        _TRAINING_LOCKS[lock.folder] = lock
        atexit.register(lock.release)
    found = sorted(ckpt.glob("*.pt")) if ckpt.is_dir() else []
    if found and not resume:
        if not overwrite:
            _TRAINING_LOCKS.pop(lock.folder, None)
            lock.release()
            names = ", ".join(p.name for p in found)
            raise OutputError(f"{out}: holds the checkpoints of another run ({names} in {ckpt}). Continue "
                              "it with --resume True, replace it with --overwrite True, or choose another "
                              "--output_dir")
        for p in found:
            p.unlink()
        fsync_dir(ckpt)
    return out
