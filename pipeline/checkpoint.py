"""Checkpoints written atomically: MONAI's CheckpointSaver with a temp-file-and-rename disk saver.

MONAI's :class:`monai.handlers.CheckpointSaver` writes in place (``atomic=False``), so a crash while
saving can leave a truncated ``model.pt``. :class:`AtomicCheckpointSaver` keeps its behaviour (best
by key metric, final, every N epochs) and its options, but every file is written to a temporary
file in the same folder and renamed over the target (``os.replace``), with ordinary read
permissions (0644 less the umask). A fixed file name (``key_metric_filename``,
``interval_filename``) is replaced in one step, never deleted first.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

__all__ = ["AtomicCheckpointSaver", "AtomicDiskSaver"]


class AtomicDiskSaver(BaseSaveHandler):
    """Ignite save handler: ``torch.save`` to a temp file beside the target, then ``os.replace``.

    Args:
        dirname: folder of the checkpoints (created).
        filename: fixed file name for every save, or ``None`` for Ignite's generated names.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        self.dirname = Path(dirname)
        self.filename = filename
        self.dirname.mkdir(parents=True, exist_ok=True)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        target = self.dirname / (self.filename or filename)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=self.dirname)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o644 & ~umask)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def remove(self, filename: str) -> None:
        if self.filename is not None:
            return  # the next save replaces the fixed name atomically; deleting first would open a gap
        (self.dirname / filename).unlink(missing_ok=True)


class AtomicCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` whose files are written atomically.

    Args:
        interval_filename: fixed name for the every-``save_interval`` checkpoint (e.g.
            ``"latest.pt"``, the one to resume from); ``None`` keeps MONAI's numbered names.
        kwargs: everything :class:`monai.handlers.CheckpointSaver` takes.
    """

    def __init__(self, *args: Any, interval_filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for cp in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if cp is None:
                continue
            fixed = getattr(cp.save_handler, "filename", None)
            if cp is self._interval_checkpoint and interval_filename is not None:
                fixed = interval_filename
            cp.save_handler = AtomicDiskSaver(self.save_dir, filename=fixed)
