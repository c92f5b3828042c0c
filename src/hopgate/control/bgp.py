"""BGP: hopgate's VIPs announced to the routers by BIRD, while they are healthy.

hopgate does not speak BGP itself.  It runs BIRD 2 (``bird``, Debian's
``bird2``), gives it a configuration it writes, and tells it what to announce
(docs/bgp.md says why BIRD).  BIRD lives in the kernel's network stack, on
the host port of the interfaces that name ``host_addresses``
(io/hostport.py): its sessions are control traffic to those addresses, which
hopgate passes to the kernel and back.

- ``render_config`` writes ``bird.conf``: one static protocol per family whose
  routes (blackholes: they go nowhere but into BGP) are what hopgate announces,
  kept in a file of their own (``announce4.conf``, ``announce6.conf``), and one
  BGP session per ``[[bgp.neighbor]]``, exporting those routes with hopgate's
  own address on the neighbour's link as their next hop: the routers send the
  VIPs' traffic to hopgate, never to the kernel.
- ``Bird`` runs the daemon (a child that ends with hopgate, however hopgate
  ends) and talks to it on its control socket (``BirdControl``: the line
  protocol ``birdc`` speaks).  A new set of routes is a rewrite of the routes'
  files and ``configure``: BIRD compares, announces the new routes and
  withdraws the old, and keeps its sessions up.
- ``Announcer`` is the control-plane thread that decides.  Twice a second it
  asks the loop which services have enough backends up (``wanted``, a cheap
  look at the router between two batches of frames), and announces each VIP
  that has at least one such service, and the configured prefixes, unless the
  node is drained (``hopgate drain``).  It reads the sessions' states for
  ``hopgate status`` and ``/metrics``, and starts BIRD again if it dies.
  When hopgate stops, BIRD is stopped first: it closes its sessions with a
  notification, and the routers withdraw the node at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hopgate.io.files import write_atomically
from hopgate.packet import addr as A

if TYPE_CHECKING:
    from hopgate.pipeline.router import Router

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

POLL = 0.5  # seconds between two looks at the services' health
SESSIONS_EVERY = 1.0  # seconds between two reads of the sessions' states
START_WAIT = 5.0  # how long BIRD may take to open its control socket
STOP_WAIT = 5.0  # how long BIRD may take to close its sessions and exit
RESTART_BACKOFF = (1.0, 30.0)  # BIRD died: first and longest wait before the next start
CONTROL_TIMEOUT = 5.0  # for one request on BIRD's control socket
PR_SET_PDEATHSIG = 1  # linux/prctl.h
FAMILIES = ((4, A.V4), (6, A.V6))


# -- what to run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Neighbour:
    address: IPAddress
    asn: int
    local: IPAddress  # the host address the session runs from
    next_hop: IPAddress  # hopgate's own address on that link: where the routes point
    interface: str  # the hopgate interface the neighbour is on

    @property
    def family(self) -> int:
        return self.address.version

    def describe(self) -> str:
        return f"{self.address} AS{self.asn} on {self.interface}"


@dataclass(frozen=True)
class BgpSpec:
    asn: int
    router_id: str
    neighbours: tuple[Neighbour, ...]
    hold_time: int
    keepalive_time: int
    connect_retry: int
    bfd: bool
    bfd_interval_ms: int
    bfd_multiplier: int
    min_backends_up: int
    announce: tuple[IPNetwork, ...] = ()
    bird: str = "bird"  # the binary


@dataclass(frozen=True)
class Paths:
    """BIRD's files, in a directory of their own beside the admin socket."""

    dir: Path

    @classmethod
    def beside(cls, admin_socket: str) -> Paths:
        return cls(Path(admin_socket).with_suffix(".bird"))

    @property
    def config(self) -> Path:
        return self.dir / "bird.conf"

    @property
    def control(self) -> Path:
        return self.dir / "bird.ctl"

    @property
    def pid(self) -> Path:
        return self.dir / "bird.pid"

    def routes(self, family: int) -> Path:
        return self.dir / f"announce{family}.conf"

    @property
    def drained(self) -> Path:
        """Present while the node is drained: a restart comes back drained."""
        return self.dir / "drained.json"


def session_name(i: int) -> str:
    return f"peer{i + 1}"


def render_config(spec: BgpSpec, paths: Paths) -> str:
    lines = [
        "# Written by hopgate at each start and reload: edit hopgate's [bgp] instead.",
        "log stderr all;",
        f"router id {spec.router_id};",
        "protocol device { scan time 10; }",
    ]
    if spec.bfd:
        ms = spec.bfd_interval_ms
        lines.append(
            f'protocol bfd {{ interface "*" {{ min rx interval {ms} ms; '
            f"min tx interval {ms} ms; multiplier {spec.bfd_multiplier}; }}; }}"
        )
    for family, _ in FAMILIES:
        # The include must start its line (BIRD's lexer).
        lines += [
            f"protocol static hopgate{family} {{",
            f"  ipv{family};",
            f'include "{paths.routes(family)}";',
            "}",
        ]
    for i, n in enumerate(spec.neighbours):
        lines += [
            f"protocol bgp {session_name(i)} {{",
            f'  description "{n.describe()}";',
            f"  local {n.local} as {spec.asn};",
            f"  neighbor {n.address} as {n.asn};",
            f"  hold time {spec.hold_time};",
            f"  keepalive time {spec.keepalive_time};",
            f"  connect retry time {spec.connect_retry};",
            # After a failed session, BIRD waits at least a minute by default.
            f"  error wait time {spec.connect_retry}, {max(60, spec.connect_retry)};",
        ]
        if spec.bfd:
            lines.append("  bfd on;")
        lines += [
            f"  ipv{n.family} {{",
            "    import none;",
            f'    export where proto = "hopgate{n.family}";',
            f"    next hop address {n.next_hop};",
            "  };",
            "}",
        ]
    return "\n".join(lines) + "\n"


def render_routes(prefixes: Iterable[IPNetwork]) -> str:
    return "".join(f"route {p} blackhole;\n" for p in sorted(prefixes, key=_order))


def _order(p: IPNetwork) -> tuple[int, int, int]:
    return p.version, int(p.network_address), p.prefixlen


# -- BIRD's control socket ---------------------------------------------------------------


class BirdError(Exception):
    pass


@dataclass
class Reply:
    """One answer of BIRD's control socket: (code, text) lines; continuation
    lines carry the code of the line they continue."""

    lines: list[tuple[int, str]]

    @property
    def code(self) -> int:
        return self.lines[-1][0] if self.lines else 0

    def text(self) -> str:
        return "\n".join(t for _, t in self.lines)


class BirdControl:
    """A client of BIRD's control socket: what ``birdc`` sends and reads.  Each
    reply line starts with a four-digit code and a dash (more follows), a space
    (the last line), or is a continuation starting with a space."""

    def __init__(self, path: Path, timeout: float = CONTROL_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, command: str) -> Reply:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            try:
                s.connect(str(self.path))
                f = s.makefile("rwb")
                hello = _read_reply(f.readline)
                if hello.code != 1:
                    raise BirdError(f"BIRD greeted with {hello.text()!r}")
                f.write(command.encode() + b"\n")
                f.flush()
                reply = _read_reply(f.readline)
            except OSError as e:
                raise BirdError(f"BIRD's control socket {self.path}: {e}") from None
        if reply.code >= 8000:
            raise BirdError(f"{command!r}: {reply.text()}")
        return reply


def _read_reply(readline: Callable[[], bytes]) -> Reply:
    lines: list[tuple[int, str]] = []
    code = 0
    while True:
        raw = readline()
        if not raw:
            raise BirdError("BIRD closed its control socket in mid-answer")
        line = raw.decode(errors="replace").rstrip("\n")
        if len(line) >= 5 and line[:4].isdigit() and line[4] in " -":
            code = int(line[:4])
            lines.append((code, line[5:]))
            if line[4] == " ":
                return Reply(lines)
        else:  # a continuation of the last code's text
            lines.append((code, line[1:]))


@dataclass
class Session:
    """What BIRD says of one BGP session."""

    name: str
    state: str  # BIRD's protocol state: up, start, down...
    since: str
    info: str  # Established, Active, Connect...
    bgp_state: str = ""
    exported: int = 0
    last_error: str = ""

    @property
    def established(self) -> bool:
        return self.bgp_state == "Established"


def parse_protocols(reply: Reply) -> dict[str, Session]:
    """``show protocols all``: each protocol's row (code 1002) and details (1006)."""
    found: dict[str, Session] = {}
    current: Session | None = None
    for code, text in reply.lines:
        if code == 1002:
            cols = text.split(None, 5)
            if len(cols) < 5:
                current = None
                continue
            name, _proto, _table, state, since = cols[:5]
            current = Session(name, state, since, cols[5].strip() if len(cols) > 5 else "")
            found[name] = current
        elif code == 1006 and current is not None:
            key, _, value = text.strip().partition(":")
            value = value.strip()
            if key == "BGP state":
                current.bgp_state = value
            elif key == "Last error":
                current.last_error = value
            elif key == "Routes":
                # "0 imported, 1 exported, 0 preferred"
                for part in value.split(","):
                    n, _, what = part.strip().partition(" ")
                    if what == "exported" and n.isdigit():
                        current.exported = int(n)
    return found


# -- the daemon ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In BIRD's process, before exec: SIGTERM when hopgate dies, however it
    dies (BIRD then closes its sessions, and the routers withdraw the node)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setsid()  # a Ctrl-C at hopgate's terminal is hopgate's to handle


class Bird:
    """BIRD, run by hopgate: its files, its process, its control socket."""

    def __init__(self, spec: BgpSpec, paths: Paths) -> None:
        self.spec = spec
        self.paths = paths
        self.control = BirdControl(paths.control)
        self._proc: subprocess.Popen[bytes] | None = None
        self._announced: dict[int, frozenset[IPNetwork]] = {4: frozenset(), 6: frozenset()}

    def binary(self) -> str:
        found = shutil.which(self.spec.bird)
        if found is None:
            raise BirdError(
                f"[bgp] runs BIRD 2, and {self.spec.bird!r} is not installed "
                "(Debian's package bird2; scripts/bootstrap installs it)"
            )
        return found

    def write_config(self) -> None:
        """bird.conf, and the routes' files if they are not there yet; checked by
        ``bird -p`` (raises BirdError with BIRD's reason)."""
        self.paths.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for family, _ in FAMILIES:
            if not self.paths.routes(family).exists():
                write_atomically(self.paths.routes(family), [b""], 0o600)
        write_atomically(self.paths.config, [render_config(self.spec, self.paths).encode()], 0o600)
        check = subprocess.run(
            [self.binary(), "-p", "-c", str(self.paths.config)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            raise BirdError(f"BIRD refuses {self.paths.config}: {check.stderr.strip()}")

    def start(self) -> None:
        """Start BIRD (a leftover of an earlier hopgate on the same files is
        stopped first) and wait for its control socket."""
        end_leftover(self.paths)
        self.write_config()
        for family, _ in FAMILIES:  # what the last BIRD announced is not announced now
            write_atomically(self.paths.routes(family), [b""], 0o600)
            self._announced[family] = frozenset()
        argv = [self.binary(), "-f", "-c", str(self.paths.config)]
        argv += ["-s", str(self.paths.control), "-P", str(self.paths.pid)]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl and setsid only
        )
        threading.Thread(
            target=_log_lines, args=(self._proc,), name="bird-log", daemon=True
        ).start()
        deadline = time.monotonic() + START_WAIT
        while True:
            if self._proc.poll() is not None:
                raise BirdError(f"BIRD exited at start with status {self._proc.returncode}")
            try:
                self.control.request("show status")
                break
            except BirdError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BirdError(
                        f"BIRD did not open {self.paths.control} in {START_WAIT} s"
                    ) from None
                time.sleep(0.05)
        log.info(
            "bgp: BIRD started (pid %d), sessions: %s",
            self._proc.pid,
            ", ".join(n.describe() for n in self.spec.neighbours) or "none",
        )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exit_status(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def announce(self, prefixes: frozenset[IPNetwork]) -> bool:
        """Make ``prefixes`` what BIRD announces; True if that changed anything."""
        changed = False
        for family, _ in FAMILIES:
            mine = frozenset(p for p in prefixes if p.version == family)
            if mine != self._announced[family]:
                write_atomically(self.paths.routes(family), [render_routes(mine).encode()], 0o600)
                changed = True
        if changed:
            self.configure()
            for family, _ in FAMILIES:
                self._announced[family] = frozenset(p for p in prefixes if p.version == family)
        return changed

    def reconfigure(self, spec: BgpSpec) -> None:
        """A reload: BIRD reads its new configuration; sessions whose settings
        did not change stay up."""
        self.spec = spec
        self.write_config()
        self.configure()

    def configure(self) -> None:
        reply = self.control.request("configure")
        if reply.code not in (3, 4, 5, 19, 20):  # reconfigured, in progress, queued, nothing to do
            raise BirdError(f"configure: {reply.text()}")

    def sessions(self) -> dict[str, Session]:
        return parse_protocols(self.control.request("show protocols all"))

    def stop(self) -> None:
        """SIGTERM: BIRD closes its sessions with a notification (the routers
        withdraw at once) and exits."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            log.warning("bgp: BIRD did not stop in %.0f s; killed", STOP_WAIT)
            proc.kill()
            proc.wait()
        log.info("bgp: BIRD stopped; its sessions are closed")


def _log_lines(proc: subprocess.Popen[bytes]) -> None:
    """BIRD's log (stderr) into hopgate's, a line at a time."""
    assert proc.stderr is not None
    for raw in proc.stderr:
        line = raw.decode(errors="replace").rstrip()
        if line:
            log.info("bird: %s", line)


def end_leftover(paths: Paths) -> None:
    """A BIRD left running on these files by a hopgate that could not stop it
    (it should have ended with it): stopped, so that this one starts clean."""
    try:
        pid = int(paths.pid.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return
    if not cmdline or Path(cmdline[0].decode(errors="replace")).name != "bird":
        return
    if str(paths.config).encode() not in cmdline:
        return
    log.warning("bgp: a BIRD (pid %d) left running on %s: stopped", pid, paths.config)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


# -- what to announce ---------------------------------------------------------------------


@dataclass(frozen=True)
class VipHealth:
    prefix: IPNetwork
    services: tuple[tuple[str, int, int], ...]  # (name, backends up, backends)


def wanted(router: Router) -> list[VipHealth]:
    """Each VIP with its services' backends up (runs in the loop thread: a
    look at a few counts, no more)."""
    nat = router.nat
    if nat is None:
        return []
    by_vip: dict[tuple[int, int], list[tuple[str, int, int]]] = {}
    for s in nat.services.all:
        up = sum(1 for b in s.backends if b.up)
        by_vip.setdefault((s.family, s.vip), []).append((s.name, up, len(s.backends)))
    out = []
    for (family, vip), services in by_vip.items():
        bits = 32 if family == A.V4 else 128
        prefix = ipaddress.ip_network((ipaddress.ip_address(A.ip_str(family, vip)), bits))
        out.append(VipHealth(prefix, tuple(services)))
    return out


@dataclass
class Drain:
    since: float  # wall clock
    timeout: float | None  # seconds; the connections left are ended then
    ended: bool = False  # the timeout passed and the connections left were ended

    def to_json(self) -> dict[str, Any]:
        return {"since": self.since, "timeout": self.timeout, "ended": self.ended}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Drain:
        timeout = data.get("timeout")
        return cls(
            float(data["since"]),
            None if timeout is None else float(timeout),
            bool(data.get("ended", False)),
        )


@dataclass
class Status:
    running: bool = False
    error: str = ""
    announced: list[str] = field(default_factory=list)
    vips: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0
    configures: int = 0


Ask = Callable[[Callable[[], Any]], "Future[Any]"]


class Announcer:
    """The control-plane thread that keeps BIRD's announcements in step with the
    services' health and the operator's drain."""

    def __init__(
        self,
        bird: Bird,
        router: Callable[[], Router],
        call: Ask,
        end_connections: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``router``: the router running (a reload replaces it); ``call``: runs
        a function in the loop; ``end_connections``: ends every connection
        (a drain's timeout), how many."""
        self.bird = bird
        self._router = router
        self._call = call
        self._end_connections = end_connections
        self._clock = clock
        # The state shown (taken by the loop's snapshot: never held across I/O),
        # and BIRD's files and process (one operation at a time).
        self._lock = threading.Lock()
        self._bird_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = Status()
        self._drain: Drain | None = self._load_drain()
        self._drain_deadline: float | None = None
        if self._drain is not None:
            d = self._drain
            if d.timeout is not None and not d.ended:  # what is left of its timeout
                left = max(0.0, d.since + d.timeout - time.time())
                self._drain_deadline = clock() + left
            log.warning(
                "bgp: the node was drained when hopgate last stopped (%s): it stays "
                "drained, announcing nothing, until `hopgate undrain`",
                bird.paths.drained,
            )

    # -- the operator --------------------------------------------------------------------

    def drain(self, timeout: float | None) -> dict[str, Any]:
        """Withdraw everything; the node keeps forwarding its connections (and,
        after ``timeout`` seconds, ends those left)."""
        with self._lock:
            if self._drain is None:
                self._drain = Drain(time.time(), timeout)
                log.info(
                    "bgp: drained by the operator: every prefix withdrawn%s",
                    f"; connections left are ended in {timeout:g} s" if timeout else "",
                )
            else:
                self._drain.timeout = timeout
            self._drain_deadline = None if timeout is None else self._clock() + timeout
            self._save_drain()
        self._wake.set()
        return self.snapshot()

    def undrain(self) -> dict[str, Any]:
        with self._lock:
            if self._drain is not None:
                log.info("bgp: undrained by the operator: healthy VIPs announced again")
            self._drain = None
            self._drain_deadline = None
            with contextlib.suppress(FileNotFoundError):
                self.bird.paths.drained.unlink()
        self._wake.set()
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            s = self._status
            drain = self._drain
            return {
                "speaker": "bird",
                "running": s.running,
                "error": s.error,
                "asn": self.bird.spec.asn,
                "router_id": self.bird.spec.router_id,
                "drained": drain is not None,
                "drain": drain.to_json() if drain is not None else None,
                "announced": list(s.announced),
                "vips": [dict(v) for v in s.vips],
                "sessions": [dict(x) for x in s.sessions],
                "restarts": s.restarts,
                "configures": s.configures,
                "min_backends_up": self.bird.spec.min_backends_up,
            }

    def reconfigure(self, spec: BgpSpec) -> None:
        """A reload with a new ``[bgp]``."""
        with self._bird_lock:
            if spec == self.bird.spec:
                return
            try:
                self.bird.reconfigure(spec)
            except (BirdError, OSError) as e:
                log.error("bgp: BIRD's new configuration was not applied: %s", e)
                with self._lock:
                    self._status.error = str(e)
        self._wake.set()

    # -- the thread ----------------------------------------------------------------------

    def start(self) -> None:
        """Start BIRD (raises BirdError if it cannot start) and the thread."""
        with self._bird_lock:
            self.bird.start()
        with self._lock:
            self._status.running = True
        self._thread = threading.Thread(target=self._run, name="bgp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Withdraw everything by stopping BIRD (its sessions close)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT + CONTROL_TIMEOUT)
        with self._bird_lock:
            self.bird.stop()
        with self._lock:
            self._status.running = False

    def _run(self) -> None:
        next_sessions = 0.0
        backoff = RESTART_BACKOFF[0]
        while not self._stopping.is_set():
            try:
                if not self.bird.alive():
                    self._restart(backoff)
                    backoff = min(backoff * 2, RESTART_BACKOFF[1])
                    continue
                self.step()
                now = self._clock()
                if now >= next_sessions:
                    self.read_sessions()
                    next_sessions = now + SESSIONS_EVERY
                backoff = RESTART_BACKOFF[0]
            except Exception as e:  # the thread goes on
                log.exception("bgp: %s", e)
                with self._lock:
                    self._status.error = str(e)
            self._wake.wait(POLL)
            self._wake.clear()

    def _restart(self, wait: float) -> None:
        with self._lock:
            self._status.running = False
            self._status.sessions = []
            self._status.error = f"BIRD exited with status {self.bird.exit_status()}"
        log.error("bgp: %s; starting it again in %.0f s", self._status.error, wait)
        if self._stopping.wait(wait):
            return
        with self._bird_lock:
            try:
                self.bird.start()
            except (BirdError, OSError) as e:
                with self._lock:
                    self._status.error = str(e)
                log.error("bgp: BIRD did not start again: %s", e)
                return
        with self._lock:
            self._status.running = True
            self._status.error = ""
            self._status.restarts += 1

    def step(self) -> None:
        """One look at the services: announce what should be, withdraw the rest."""
        try:
            vips: list[VipHealth] = self._call(lambda: wanted(self._router())).result(
                CONTROL_TIMEOUT
            )
        except Exception as e:  # noqa: BLE001 - the loop did not answer: nothing changes
            log.warning("bgp: no answer from the loop (%s); announcements unchanged", e)
            return
        least = self.bird.spec.min_backends_up
        with self._lock:
            drained = self._drain is not None
            prefixes: set[IPNetwork] = set()
            views = []
            for v in vips:
                healthy = any(up >= least for _, up, _n in v.services)
                if healthy and not drained:
                    prefixes.add(v.prefix)
                views.append(
                    {
                        "prefix": str(v.prefix),
                        "announced": healthy and not drained,
                        "why": _why(healthy, drained, least),
                        "services": [
                            {"name": name, "backends_up": up, "backends": n}
                            for name, up, n in v.services
                        ],
                    }
                )
            if not drained:
                prefixes.update(self.bird.spec.announce)
        with self._bird_lock:
            changed = self.bird.announce(frozenset(prefixes))
        if changed:
            log.info(
                "bgp: announcing %s",
                ", ".join(str(p) for p in sorted(prefixes, key=_order)) or "nothing",
            )
        with self._lock:
            self._status.configures += changed
            self._status.announced = [str(p) for p in sorted(prefixes, key=_order)]
            self._status.vips = views
            deadline = self._drain_deadline
            timed_out = (
                self._drain is not None
                and not self._drain.ended
                and deadline is not None
                and self._clock() >= deadline
            )
        if timed_out:
            self._end_drained()

    def _end_drained(self) -> None:
        n = self._end_connections() if self._end_connections is not None else 0
        with self._lock:
            if self._drain is not None:
                self._drain.ended = True
                self._save_drain()
        log.info("bgp: drain timeout: %d connections left were ended", n)

    def read_sessions(self) -> None:
        try:
            with self._bird_lock:
                found = self.bird.sessions()
        except BirdError as e:
            with self._lock:
                self._status.error = str(e)
            return
        out = []
        for i, n in enumerate(self.bird.spec.neighbours):
            s = found.get(session_name(i))
            out.append(
                {
                    "neighbor": str(n.address),
                    "asn": n.asn,
                    "interface": n.interface,
                    "local": str(n.local),
                    "next_hop": str(n.next_hop),
                    "established": bool(s and s.established),
                    "state": s.bgp_state or s.info if s else "unknown",
                    "since": s.since if s else "",
                    "exported": s.exported if s else 0,
                    "last_error": s.last_error if s else "",
                }
            )
        with self._lock:
            before = {x["neighbor"]: x["established"] for x in self._status.sessions}
            self._status.sessions = out
            self._status.error = ""
        for x in out:
            if before.get(x["neighbor"], False) != x["established"]:
                log.info(
                    "bgp: session with %s %s",
                    x["neighbor"],
                    "established" if x["established"] else f"down ({x['state']})",
                )

    # -- the drain's file ----------------------------------------------------------------

    def _load_drain(self) -> Drain | None:
        try:
            return Drain.from_json(json.loads(self.bird.paths.drained.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("bgp: %s unreadable (%s): the node is drained", self.bird.paths.drained, e)
            return Drain(time.time(), None)

    def _save_drain(self) -> None:
        if self._drain is None:
            return
        try:
            self.bird.paths.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomically(
                self.bird.paths.drained, [json.dumps(self._drain.to_json()).encode()], 0o600
            )
        except OSError as e:
            log.error("bgp: cannot record the drain in %s: %s", self.bird.paths.drained, e)


def _why(healthy: bool, drained: bool, least: int) -> str:
    if drained:
        return "the node is drained"
    if healthy:
        return f"a service has {least} or more backends up"
    return f"no service has {least} or more backends up"
