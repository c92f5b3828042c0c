"""The admin API: the daemon's state as JSON and Prometheus text, over HTTP.

Served on a Unix socket, for root only (``hopgate status``, ``hopgate conns``
``hopgate backend``, ``reload``, ``drain`` and ``undrain`` use it: ``/status``,
``/metrics``, ``/conns``, and ``POST /conns/delete``, ``/conns/flush``,
``/backend``, ``/reload``, ``/drain`` and ``/undrain``) and, if configured,
on a TCP address for Prometheus, which serves ``/metrics`` and nothing else.
Requests are answered from a snapshot the loop thread takes between two batches
of frames, so the pipeline is never read while it changes; work over the
connections is a job the loop runs in slices (``io.mailbox.Job``), streamed to
the client as it comes (chunked); a backend's change is one call in the loop;
a reload is built in the request's thread and swapped in by one call in the loop.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import logging
import os
import socket
import socketserver
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hopgate.control import metrics
from hopgate.io.mailbox import Job, JobStalledError

log = logging.getLogger(__name__)

Snapshot = Callable[[], "Future[dict[str, Any]]"]
# Starts a job over the connections: ("list" | "delete" | "flush", query); raises
# ValueError for a query that does not parse.
Conns = Callable[[str, dict[str, str]], Job]
# Changes backends at run time (control/backends.py): raises ValueError for a
# query that does not parse; the future raises LookupError for an unknown service
# or backend.
Backends = Callable[[dict[str, str]], "Future[dict[str, Any]]"]
# Reloads the config file (control/reload.py): what it did; raises ValueError
# (a ReloadError) with every problem when the file cannot be applied.
Reload = Callable[[], dict[str, Any]]
# Another POST (``hopgate drain``, ``undrain``): its query in, what it did out;
# raises ValueError for a query that does not parse.
Action = Callable[[dict[str, str]], dict[str, Any]]
SNAPSHOT_TIMEOUT = 5.0  # for a snapshot; for a job, the longest it may go without a slice
CLIENT_TIMEOUT = 30.0  # how long a client waits for the next bytes of an answer
CONNS_ACTIONS = {"/conns/delete": "delete", "/conns/flush": "flush"}  # POST only
BACKEND = "/backend"  # POST only
RELOAD = "/reload"  # POST only
DRAIN = "/drain"  # POST only, with [bgp]
UNDRAIN = "/undrain"  # POST only, with [bgp]


class AdminError(Exception):
    pass


class AdminRefusedError(AdminError):
    """The daemon answered, with an error status: ``reason`` is what it said."""

    def __init__(self, message: str, status: int, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def _handler(
    snapshot: Snapshot,
    conns: Conns | None,
    backends: Backends | None = None,
    reload: Reload | None = None,
    actions: dict[str, Action] | None = None,
    *,
    metrics_only: bool = False,
) -> type[BaseHTTPRequestHandler]:
    """The request handler: all of the API, or (``metrics_only``, for the TCP
    listener anyone on the host can reach) ``GET /metrics`` alone."""

    # The POSTs that take a query and answer JSON; a reload is one of them.
    posts: dict[str, Action] = {}
    if not metrics_only:
        posts.update(actions or {})
        if reload is not None:
            posts[RELOAD] = lambda query: reload()

    class Handler(BaseHTTPRequestHandler):
        server_version = "hopgate"
        protocol_version = "HTTP/1.1"  # for chunked answers; every answer closes
        timeout = CLIENT_TIMEOUT  # a client that stops reading is let go

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if metrics_only and url.path != "/metrics":
                self._reply(404, "text/plain", b"not found: this port serves /metrics only\n")
                return
            if url.path == "/conns" and conns is not None:
                self._job(conns, "list", query)
                return
            if (
                (url.path in CONNS_ACTIONS and conns is not None)
                or (url.path == BACKEND and backends is not None)
                or url.path in posts
            ):
                self._reply(405, "text/plain", f"{url.path} takes a POST\n".encode())
                return
            if url.path in ("/status", "/metrics"):
                future = snapshot()
            else:
                self._reply(404, "text/plain", b"not found: try /status, /metrics or /conns\n")
                return
            result = self._result(future)
            if result is None:
                return
            if url.path == "/metrics":
                self._reply(200, metrics.CONTENT_TYPE, metrics.render(result))
            else:
                self._reply(200, "application/json", json.dumps(result).encode())

        def do_POST(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if url.path == BACKEND and backends is not None and not metrics_only:
                self._backend(backends, query)
                return
            if url.path in posts and not metrics_only:
                self._action(posts[url.path], query)
                return
            action = CONNS_ACTIONS.get(url.path)
            if metrics_only or action is None or conns is None:
                self._reply(404, "text/plain", b"not found\n")
                return
            self._job(conns, action, query)

        def _backend(self, backends: Backends, query: dict[str, str]) -> None:
            try:
                future = backends(query)
            except ValueError as e:  # a query that does not parse
                self._reply(400, "text/plain", f"{e}\n".encode())
                return
            result = self._result(future)
            if result is not None:
                self._reply(200, "application/json", json.dumps(result).encode())

        def _action(self, action: Action, query: dict[str, str]) -> None:
            """400 for a query that does not parse (a reload: a file that cannot
            be applied, with every reason), 404 for nothing there to act on, 500
            for a failure (logged)."""
            name = urllib.parse.urlsplit(self.path).path.lstrip("/")
            try:
                result = action(query)
            except ValueError as e:
                self._reply(400, "text/plain", f"{e}\n".encode())
                return
            except Exception as e:
                if isinstance(e, LookupError) and not isinstance(e, KeyError | IndexError):
                    self._reply(404, "text/plain", f"{e.args[0] if e.args else e}\n".encode())
                    return
                log.exception("%s failed", name)  # a KeyError or IndexError is a bug
                self._reply(500, "text/plain", f"{name} failed: {e}\n".encode())
                return
            self._reply(200, "application/json", json.dumps(result).encode())

        def _result(self, future: Future[dict[str, Any]]) -> dict[str, Any] | None:
            """What the loop answered; None when it failed, and the client has
            been told why (400: a query that does not parse, 404: something it
            names that is not there)."""
            try:
                return future.result(timeout=SNAPSHOT_TIMEOUT)
            except ValueError as e:
                self._reply(400, "text/plain", f"{e}\n".encode())
            except LookupError as e:
                self._reply(404, "text/plain", f"{e.args[0] if e.args else e}\n".encode())
            except Exception as e:  # noqa: BLE001 - reported to the client
                self._reply(503, "text/plain", f"no answer from the loop: {e}\n".encode())
            return None

        def _job(self, conns: Conns, action: str, query: dict[str, str]) -> None:
            """Start a job in the loop and stream what it yields, chunked.  An error
            before its first bytes gets a status; one after cuts the answer short
            (no final chunk), which the client notices."""
            try:
                job = conns(action, query)
            except ValueError as e:  # a filter that does not parse
                self._reply(400, "text/plain", f"{e}\n".encode())
                return
            chunks = job.chunks(SNAPSHOT_TIMEOUT)
            try:
                try:
                    first = next(chunks, b"")
                except JobStalledError as e:
                    self._reply(503, "text/plain", f"no answer from the loop: {e}\n".encode())
                    return
                except Exception as e:  # noqa: BLE001 - reported to the client
                    self._reply(500, "text/plain", f"{action} failed: {e}\n".encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for chunk in itertools.chain((first,), chunks):
                        if chunk:
                            self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                except Exception as e:  # noqa: BLE001 - the answer is cut short
                    log.info("admin: %s of connections cut short: %s", action, e)
            finally:
                chunks.close()  # cancels the job if it is not over

        def _reply(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
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
        conns: Conns | None = None,
        backends: Backends | None = None,
        reload: Reload | None = None,
        actions: dict[str, Action] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self._actions = actions
        self._snapshot = snapshot
        self._conns = conns
        self._backends = backends
        self._reload = reload
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
        handler = _handler(self._snapshot, self._conns, self._backends, self._reload, self._actions)
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
                tcp = server_class((host, port), _handler(self._snapshot, None, metrics_only=True))
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


def stream(
    socket_path: str, path: str, method: str = "GET", timeout: float = CLIENT_TIMEOUT
) -> Iterator[bytes]:
    """The body of ``method path`` from the daemon listening on ``socket_path``,
    as it comes.  Raises AdminError, also when the body is cut short."""
    conn = _UnixConnection(socket_path, timeout)
    try:
        try:
            conn.request(method, path)
            resp = conn.getresponse()
        except FileNotFoundError:
            raise AdminError(f"no hopgate is running with admin socket {socket_path}") from None
        except ConnectionRefusedError:
            raise AdminError(
                f"{socket_path}: nobody answers (a daemon that stopped uncleanly?)"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            raise AdminError(f"{socket_path}: {e}") from None
        try:
            if resp.status != 200:
                reason = resp.read().decode(errors="replace").strip()
                raise AdminRefusedError(
                    f"{socket_path}{path}: {resp.status} {reason}", resp.status, reason
                )
            while chunk := resp.read1(1 << 16):
                yield chunk
        except (OSError, http.client.HTTPException) as e:
            raise AdminError(f"{socket_path}{path}: the answer was cut short ({e!r})") from None
    finally:
        conn.close()


def fetch(
    socket_path: str, path: str = "/status", method: str = "GET", timeout: float = 10.0
) -> bytes:
    """``method path`` from the daemon listening on ``socket_path``: the whole body."""
    return b"".join(stream(socket_path, path, method, timeout))


def fetch_status(socket_path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fetch(socket_path, "/status"))
    return data


def _query(filters: dict[str, str]) -> str:
    return urllib.parse.urlencode({k: v for k, v in filters.items() if v})


def stream_conns(socket_path: str, filters: dict[str, str]) -> Iterator[bytes]:
    """The listing's JSON as it comes (one connection a line)."""
    return stream(socket_path, "/conns?" + _query(filters))


def fetch_conns(socket_path: str, filters: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(b"".join(stream_conns(socket_path, filters)))
    return data


def delete_conns(socket_path: str, filters: dict[str, str] | None = None) -> int:
    """Remove the connections matching ``filters`` (all of them if None: a
    flush); how many were removed."""
    path = "/conns/flush" if filters is None else "/conns/delete?" + _query(filters)
    data: dict[str, Any] = json.loads(fetch(socket_path, path, "POST", CLIENT_TIMEOUT))
    return int(data["deleted"])


def reload(socket_path: str) -> dict[str, Any]:
    """Have the daemon read its config file again and apply it; what it did.
    Raises AdminRefusedError with every problem when the file cannot be applied."""
    data: dict[str, Any] = json.loads(fetch(socket_path, RELOAD, "POST", CLIENT_TIMEOUT))
    return data


def change_backend(socket_path: str, query: dict[str, str]) -> dict[str, Any]:
    """Drain, disable, enable or weigh backends (control/backends.py's query);
    what changed.  Raises AdminRefusedError with the daemon's reason when it refuses."""
    path = f"{BACKEND}?{urllib.parse.urlencode(query)}"
    data: dict[str, Any] = json.loads(fetch(socket_path, path, "POST", CLIENT_TIMEOUT))
    return data


def drain(socket_path: str, timeout: float | None = None) -> dict[str, Any]:
    """Withdraw every prefix this node announces (``[bgp]``); its connections go
    on (ended after ``timeout`` seconds if given).  The BGP state after."""
    path = DRAIN + (f"?{urllib.parse.urlencode({'timeout': timeout})}" if timeout else "")
    data: dict[str, Any] = json.loads(fetch(socket_path, path, "POST", CLIENT_TIMEOUT))
    return data


def undrain(socket_path: str) -> dict[str, Any]:
    """Announce the healthy VIPs again; the BGP state after."""
    data: dict[str, Any] = json.loads(fetch(socket_path, UNDRAIN, "POST", CLIENT_TIMEOUT))
    return data
