"""The connection state file (issue 12): where it is, writing it whole or not
at all (io/files.py), and the checkpoints.  What is in it is
pipeline/nat/persist.py's."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from hopgate.io.files import write_atomically

log = logging.getLogger(__name__)


def default_path(admin_socket: str) -> str:
    """The state file beside the admin socket: one per hopgate, as the socket is."""
    return str(Path(admin_socket).with_suffix(".state"))


def write(path: str, chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` to ``path`` whole or not at all (root only); returns the
    bytes written."""
    return write_atomically(Path(path), chunks, 0o600)


class Checkpoints:
    """Writes the state every ``interval`` seconds (0: never) and when asked
    (``now``, e.g. on SIGUSR1), in a thread of its own: ``produce`` gives the
    chunks to write (the daemon's reads them from a job the loop runs a slice
    at a time, so forwarding never waits for a checkpoint)."""

    def __init__(
        self, path: str, interval: float, produce: Callable[[], Iterable[bytes] | None]
    ) -> None:
        """``produce``: the chunks of one checkpoint, or None when there is no
        state to keep (no NAT or services, since start or since a reload)."""
        self.path = path
        self.interval = interval
        self._produce = produce
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="checkpoints", daemon=True)
        self.written = 0  # checkpoints written
        self.failed = 0

    def start(self) -> None:
        self._thread.start()

    def now(self) -> None:
        """Write one as soon as possible (safe from a signal handler)."""
        self._wake.set()

    def stop(self) -> None:
        """No more checkpoints.  One under way when the loop has stopped cannot
        finish (the loop no longer runs its job): it is not waited for, and
        it leaves no file (see ``write``)."""
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval if self.interval > 0 else None)
            self._wake.clear()
            if self._stop:
                return
            try:
                chunks = self._produce()
                if chunks is None:
                    log.debug("state: no connections to checkpoint (no NAT or services)")
                    continue
                size = write(self.path, chunks)
            except Exception as e:  # noqa: BLE001 - a failed checkpoint is logged, never fatal
                self.failed += 1
                log.warning("state checkpoint to %s failed: %s", self.path, e)
                continue
            self.written += 1
            log.debug("state checkpoint: %d bytes to %s", size, self.path)
