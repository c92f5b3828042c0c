"""Files hopgate leaves for the next hopgate (the state file, the interfaces'
records): written whole or not at all, so that a crash while writing never
leaves a broken one."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path


def write_atomically(path: Path, chunks: Iterable[bytes], mode: int = 0o600) -> int:
    """Write ``chunks`` to ``path``: to a temporary file beside it, synced, then
    renamed over it, and the directory synced.  Returns the bytes written;
    raises OSError (and whatever ``chunks`` raises) with nothing left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # One temporary name per process and thread: two writers never share one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    size = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return size
