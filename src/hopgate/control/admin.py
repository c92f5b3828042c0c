"""The admin API: the daemon's state as JSON and Prometheus text, over HTTP.

Served on a Unix socket (``hopgate status`` reads it) and, if configured, on a
TCP address for Prometheus.  Requests are answered from a snapshot the loop
thread takes between two batches of frames, so the pipeline is never read
while it changes.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
import socketserver
import threading
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hopgate.control import metrics

log = logging.getLogger(__name__)

Snapshot = Callable[[], "Future[dict[str, Any]]"]
Query = Callable[[dict[str, str]], "Future[Any]"]
SNAPSHOT_TIMEOUT = 5.0


class AdminError(Exception):
    pass


def _handler(snapshot: Snapshot, conns: Query | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "hopgate"

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/conns" and conns is not None:
                future: Future[Any] = conns(query)
            elif url.path in ("/status", "/metrics"):
                future = snapshot()
            else:
                self._reply(404, "text/plain", b"not found: try /status, /metrics or /conns\n")
                return
            try:
                result = future.result(timeout=SNAPSHOT_TIMEOUT)
            except ValueError as e:  # a filter that does not parse
                self._reply(400, "text/plain", f"{e}\n".encode())
                return
            except Exception as e:  # noqa: BLE001 - reported to the client
                self._reply(503, "text/plain", f"no answer from the loop: {e}\n".encode())
                return
            if url.path == "/metrics":
                self._reply(200, metrics.CONTENT_TYPE, metrics.render(result))
            else:
                self._reply(200, "application/json", json.dumps(result).encode())

        def _reply(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return "admin-client"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("admin: " + format, *args)

    return Handler


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, Any]:
        request, _ = super().get_request()
        return request, ("admin-client", 0)


class _V6HTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class AdminServer:
    def __init__(
        self,
        socket_path: str,
        snapshot: Snapshot,
        metrics_listen: tuple[str, int] | None = None,
        conns: Query | None = None,
    ) -> None:
        self.socket_path = socket_path
        self._snapshot = snapshot
        self._conns = conns
        self._metrics_listen = metrics_listen
        self._servers: list[socketserver.BaseServer] = []

    def start(self) -> None:
        path = Path(self.socket_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if _someone_listens(path):
                raise AdminError(
                    f"another hopgate answers on {path}; give this one its own [admin] socket"
                )
            path.unlink()
        handler = _handler(self._snapshot, self._conns)
        old_umask = os.umask(0o077)  # the state is for root and the operator only
        try:
            unix = _UnixHTTPServer(str(path), handler)
        finally:
            os.umask(old_umask)
        servers: list[socketserver.BaseServer] = [unix]
        if self._metrics_listen is not None:
            host, port = self._metrics_listen
            server_class = _V6HTTPServer if ":" in host else ThreadingHTTPServer
            try:
                tcp = server_class((host, port), handler)
            except BaseException:
                unix.server_close()
                path.unlink(missing_ok=True)
                raise
            tcp.daemon_threads = True
            servers.append(tcp)
        # Only servers that serve are kept: stop() waits for each to finish serving.
        self._servers = servers
        for server in servers:
            threading.Thread(target=server.serve_forever, name="hopgate-admin", daemon=True).start()

    def stop(self) -> None:
        """Stop serving and remove the socket; nothing if start() did not succeed
        (the path may then be another daemon's)."""
        if not self._servers:
            return
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []
        with contextlib.suppress(FileNotFoundError):
            Path(self.socket_path).unlink()


def _someone_listens(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def fetch(socket_path: str, path: str = "/status", timeout: float = 10.0) -> bytes:
    """GET ``path`` from the daemon listening on ``socket_path``."""
    conn = _UnixConnection(socket_path, timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    except FileNotFoundError:
        raise AdminError(f"no hopgate is running with admin socket {socket_path}") from None
    except ConnectionRefusedError:
        raise AdminError(
            f"{socket_path}: nobody answers (a daemon that stopped uncleanly?)"
        ) from None
    except OSError as e:
        raise AdminError(f"{socket_path}: {e}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise AdminError(
            f"{socket_path}{path}: {resp.status} {body.decode(errors='replace').strip()}"
        )
    return body


def fetch_status(socket_path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fetch(socket_path, "/status"))
    return data


def fetch_conns(socket_path: str, filters: dict[str, str]) -> dict[str, Any]:
    query = urllib.parse.urlencode({k: v for k, v in filters.items() if v})
    data: dict[str, Any] = json.loads(fetch(socket_path, "/conns?" + query))
    return data
