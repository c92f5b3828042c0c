"""Network namespaces joined by veth pairs: the lab that tests, the demo and the
benchmarks share.

Every lab has a unique name (``hg`` and six hex digits); its namespaces are
named after it, so labs running at once never collide.  What a lab creates is
recorded in ``/run/hopgate/labs/<name>/lab.json`` as it is created: the
namespaces, and each process with its start time.  ``Lab.close()`` (also run on
leaving a ``with`` block, whatever happened inside) stops those processes, by
pid, and deletes those namespaces, by name, which takes their veths with them;
``hopgate lab down NAME`` does the same from another process.  Nothing is ever
found or killed by pattern.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from pyroute2 import NetNS, netns

from hopgate.io.netprep import RECORD_DIR

log = logging.getLogger(__name__)

LAB_ROOT = Path(os.environ.get("HOPGATE_LAB_ROOT", "/run/hopgate/labs"))

# Offloads turned off on every lab veth, so that what hopgate and tcpdump see is
# what is on the wire: no partial checksums, no merged or unsegmented frames.
OFFLOADS_OFF = ("rx", "off", "tx", "off", "sg", "off", "tso", "off", "gso", "off", "gro", "off")


class LabError(Exception):
    pass


def _proc_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot; tells a pid reused by
    another process from the one the lab started.  None once it has ended,
    reaped or not: a lab's processes outlive the ``hopgate lab up`` that
    started them, and the process that inherits them (pid 1) may never reap
    them."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields follow the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # a zombie, or dead
        return None
    return int(fields[19])


@dataclass
class Process:
    """A process the lab started, inside one of its namespaces."""

    name: str
    namespace: str
    popen: subprocess.Popen[bytes] | None
    pid: int
    start_time: int | None
    log_path: Path | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _proc_start_time(self.pid) == self.start_time

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM its process group, then SIGKILL after ``timeout``; only if it is
        still the process the lab started."""
        if not self.alive() or _proc_start_time(self.pid) != self.start_time:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(0.05)
            else:
                time.sleep(0.05)
            if not self.alive():
                return
        log.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, self.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(2)

    def output(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class Namespace:
    def __init__(self, lab: Lab, role: str) -> None:
        self.lab = lab
        self.role = role
        self.name = f"{lab.name}-{role}"

    def __repr__(self) -> str:
        return f"Namespace({self.name})"

    @contextlib.contextmanager
    def netlink(self) -> Iterator[NetNS]:
        with NetNS(self.name) as ns:
            yield ns

    def run(
        self,
        *argv: str,
        timeout: float = 60.0,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in this namespace and wait for it."""
        cmd = ["ip", "netns", "exec", self.name, *argv]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, input=input, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise LabError(f"{self.name}: {' '.join(argv)} took more than {timeout}s") from e
        if check and done.returncode != 0:
            raise LabError(
                f"{self.name}: {' '.join(argv)} exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()}"
            )
        return done

    def spawn(self, name: str, *argv: str, env: dict[str, str] | None = None) -> Process:
        """Start a long-running command in this namespace, in its own process group,
        with its output in the lab's directory; the lab stops it on close."""
        log_path = self.lab.dir / f"{name}.log"
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        proc = Process(name, self.name, popen, popen.pid, _proc_start_time(popen.pid), log_path)
        self.lab._record(proc)
        return proc

    def set_sysctls(self, settings: Mapping[str, str | int]) -> None:
        args = [f"{k}={v}" for k, v in settings.items()]
        self.run("sysctl", "-q", "-w", *args)

    def address(self, ifname: str, *cidrs: str) -> None:
        with self.netlink() as ns:
            index = ns.link_lookup(ifname=ifname)[0]
            for cidr in cidrs:
                iface = ipaddress.ip_interface(cidr)
                ns.addr(
                    "add",
                    index=index,
                    address=str(iface.ip),
                    prefixlen=iface.network.prefixlen,
                    # IFA_F_NODAD: the lab's addresses are unique; no need to wait for DAD.
                    **({"flags": 0x02} if iface.version == 6 else {}),
                )

    def route(self, prefix: str, via: str) -> None:
        """Add a route; ``prefix`` may be "default" (of the family of ``via``)."""
        family = 10 if ipaddress.ip_address(via).version == 6 else 2
        with self.netlink() as ns:
            ns.route("add", dst=prefix, gateway=via, family=family)

    def mac(self, ifname: str) -> str:
        with self.netlink() as ns:
            link = ns.get_links(ns.link_lookup(ifname=ifname)[0])[0]
            return str(link.get_attr("IFLA_ADDRESS"))


@dataclass
class _Record:
    name: str
    created: float
    namespaces: list[str] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class Lab:
    """A set of namespaces and veth links with a unique name, cleaned up on close."""

    def __init__(self, name: str | None = None, prefix: str = "hg") -> None:
        self.name = name or f"{prefix}{secrets.token_hex(3)}"
        if len(self.name) > 24 or not self.name.replace("-", "").isalnum():
            raise LabError(f"lab name {self.name!r}: use up to 24 letters, digits and '-'")
        self.dir = LAB_ROOT / self.name
        if self.dir.exists():
            raise LabError(f"a lab named {self.name} exists already ({self.dir})")
        self.dir.mkdir(parents=True)
        self.namespaces: dict[str, Namespace] = {}
        self.processes: list[Process] = []
        self._rec = _Record(self.name, time.time())
        self._closed = False
        self._save()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building --------------------------------------------------------------

    def namespace(self, role: str) -> Namespace:
        ns = Namespace(self, role)
        netns.create(ns.name)
        self.namespaces[role] = ns
        self._rec.namespaces.append(ns.name)
        self._save()
        # Quiet, fast, predictable: loopback up, no IPv6 DAD delay, no router
        # advertisements acted on.
        ns.set_sysctls(
            {
                "net.ipv6.conf.all.accept_dad": 0,
                "net.ipv6.conf.default.accept_dad": 0,
                "net.ipv6.conf.all.accept_ra": 0,
                "net.ipv6.conf.default.accept_ra": 0,
            }
        )
        with ns.netlink() as nl:
            nl.link("set", index=nl.link_lookup(ifname="lo")[0], state="up")
        return ns

    def link(
        self,
        a: Namespace,
        a_if: str,
        b: Namespace,
        b_if: str,
        *,
        mtu: int = 1500,
        b_mtu: int | None = None,
        offloads_off: bool = True,
    ) -> None:
        """A veth pair between two namespaces, both ends up."""
        with a.netlink() as ns:
            ns.link("add", ifname=a_if, kind="veth", peer={"ifname": b_if, "net_ns_fd": b.name})
            ns.link("set", index=ns.link_lookup(ifname=a_if)[0], mtu=mtu, state="up")
        with b.netlink() as ns:
            ns.link("set", index=ns.link_lookup(ifname=b_if)[0], mtu=b_mtu or mtu, state="up")
        if offloads_off:
            a.run("ethtool", "-K", a_if, *OFFLOADS_OFF)
            b.run("ethtool", "-K", b_if, *OFFLOADS_OFF)

    def pass_xdp(self, ns: Namespace, *ifnames: str) -> None:
        """Give ``ifnames`` (veth ends in ``ns``) an XDP program that passes
        every frame: a veth takes what an XDP program redirects to it only if
        its peer has one (or GRO), and the labs turn GRO off.  For the peers of
        hopgate's interfaces when it runs its fast path natively."""
        ns.run(sys.executable, "-m", "hopgate.lab.xdppass", *ifnames)

    def bridge(self, ns: Namespace, name: str, ports: Sequence[str]) -> None:
        """A Linux bridge in ``ns`` joining ``ports`` (veth ends already there):
        a switch for several hosts on one subnet.  Multicast snooping is off, so
        Neighbor Discovery's multicast reaches every port."""
        ns.run("ip", "link", "add", "name", name, "type", "bridge", "mcast_snooping", "0")
        for port in ports:
            ns.run("ip", "link", "set", port, "master", name)
        ns.run("ip", "link", "set", name, "up")

    def note(self, **info: Any) -> None:
        """Keep facts about the lab (addresses, roles) in its record, for ``lab list``."""
        self._rec.info.update(info)
        self._save()

    # -- bookkeeping --------------------------------------------------------------

    def _record(self, proc: Process) -> None:
        self.processes.append(proc)
        self._rec.processes.append(
            {
                "name": proc.name,
                "namespace": proc.namespace,
                "pid": proc.pid,
                "start_time": proc.start_time,
            }
        )
        self._save()

    def _save(self) -> None:
        path = self.dir / "lab.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._rec.__dict__, indent=2))
        tmp.replace(path)

    def close(self) -> None:
        """Stop the lab's processes, delete its namespaces and its directory.
        Safe to call twice; carries on past errors so that everything it can remove is removed."""
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                log.warning("stopping %s: %s", proc.name, e)
        _delete_namespaces(self._rec.namespaces)
        shutil.rmtree(self.dir, ignore_errors=True)


class Topology:
    """What every lab shape shares: a ``Lab`` built by ``_build`` (closed again if
    building fails), namespaces by role, and cleanup on leaving a ``with``."""

    lab: Lab

    def _create(self, name: str | None, build: Callable[[], None]) -> None:
        self.lab = Lab(name)
        try:
            build()
        except BaseException:
            self.lab.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.lab.close()

    @property
    def name(self) -> str:
        return self.lab.name

    def ns(self, role: str) -> Namespace:
        return self.lab.namespaces[role]


def _delete_namespaces(names: Sequence[str]) -> None:
    """Delete the namespaces, and the interface records a hopgate killed in one
    of them left (io/netprep.py: by the namespace's inode, which the kernel
    gives to another namespace once this one is gone)."""
    existing = set(netns.listnetns())
    for name in names:
        if name in existing:
            try:
                inode = os.stat(f"/run/netns/{name}").st_ino
            except OSError:
                inode = None
            try:
                netns.remove(name)
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                log.warning("deleting namespace %s: %s", name, e)
                continue
            if inode is not None:
                for record in RECORD_DIR.glob(f"{inode}-*.json"):
                    record.unlink(missing_ok=True)


def list_labs() -> list[dict[str, Any]]:
    """The labs recorded on this machine, with what of them is still there."""
    labs: list[dict[str, Any]] = []
    if not LAB_ROOT.exists():
        return labs
    existing = set(netns.listnetns())
    for path in sorted(LAB_ROOT.glob("*/lab.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        rec["namespaces_present"] = [n for n in rec["namespaces"] if n in existing]
        rec["processes_running"] = [
            p for p in rec["processes"] if _proc_start_time(p["pid"]) == p["start_time"]
        ]
        labs.append(rec)
    return labs


def destroy(name: str) -> bool:
    """Tear down a recorded lab by name (``hopgate lab down``).  False if unknown."""
    path = LAB_ROOT / name / "lab.json"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    for p in reversed(rec.get("processes", [])):
        Process(p["name"], p["namespace"], None, p["pid"], p["start_time"]).stop()
    _delete_namespaces(rec.get("namespaces", []))
    shutil.rmtree(LAB_ROOT / name, ignore_errors=True)
    return True
