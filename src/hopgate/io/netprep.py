"""Taking interfaces from the kernel for hopgate, and giving them back.

hopgate owns the IP addresses of the interfaces it runs on; the kernel must
stay silent there, or two stacks would answer (two ARP replies, a kernel RST
racing hopgate's).  So, on each interface, hopgate:
- refuses to start if the kernel holds an IPv4 address or a non-link-local
  IPv6 address on it, naming the interface and the address;
- turns the kernel's IPv6 off (no link-local address, no Neighbor Discovery
  answers), stops its ARP replies (arp_ignore=8), its forwarding, and its local
  delivery of what arrives there (strict rp_filter: no kernel route points out
  of these interfaces);
- turns GRO and LRO off, so frames are seen as they were on the wire;
- brings the link up.
Everything changed is restored on exit.

What an interface was is recorded in a file (a ``Record``, under
``RECORD_DIR``) before anything on it changes, and the file is removed when the
interface is given back.  A hopgate that dies without giving it back (kill -9,
the OOM killer) leaves the file; the next hopgate on that interface takes the
recorded settings as the originals, not hopgate's own that the interface still
has, and gives those back when it stops.  A record belongs to one network
namespace (the inode of /proc/self/ns/net, and its cookie where the kernel has
one: an inode is reused once its namespace is gone, a cookie never) and one
interface (its name, and its ifindex: a re-created interface is another).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import platform
import re
import socket
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from pyroute2 import IPRoute
from pyroute2.ethtool import Ethtool
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

from hopgate.io.files import write_atomically

log = logging.getLogger(__name__)

ARPHRD_ETHER = 1  # linux/if_arp.h (neither socket nor pyroute2 names it)
# Receive offloads that merge frames; what hopgate must not be shown.
MERGING_OFFLOADS = ("rx-gro", "rx-lro", "rx-gro-hw", "rx-gro-list", "rx-udp-gro-forwarding")
# What hopgate sets on each interface: a record's key, the path under
# /proc/sys ("{}": the interface's name), the value.
SYSCTLS: dict[str, tuple[str, str]] = {
    "ipv6.disable_ipv6": ("net/ipv6/conf/{}/disable_ipv6", "1"),
    "ipv4.arp_ignore": ("net/ipv4/conf/{}/arp_ignore", "8"),
    "ipv4.forwarding": ("net/ipv4/conf/{}/forwarding", "0"),
    "ipv4.rp_filter": ("net/ipv4/conf/{}/rp_filter", "1"),
}
# Where the records are: one file per network namespace and interface.  Every
# namespace shares /run; tests point this elsewhere.
RECORD_DIR = Path("/run/hopgate/interfaces")
RECORD_VERSION = 1


# What a record found at start is: see ``judge``.
Verdict = Literal["other-netns", "other-link", "held", "left"]


class PrepareError(Exception):
    pass


class RecordError(ValueError):
    """A record file that cannot be used (not JSON, another version, a field
    missing or of the wrong kind)."""


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    mac: bytes
    mtu: int
    kind: str = ""  # the driver's kind ("veth", "bridge"...; "" for a physical device)


@dataclass(frozen=True)
class Netns:
    """The identity of a network namespace."""

    inode: int
    cookie: int | None = None  # SO_NETNS_COOKIE (Linux 5.14 and later)

    @classmethod
    def current(cls) -> Netns:
        return cls(os.stat("/proc/self/ns/net").st_ino, _netns_cookie())


@dataclass(frozen=True)
class Record:
    """An interface as hopgate found it, before it changed anything: what it
    gives back.  The one format of the record files (``to_json``,
    ``from_json``)."""

    netns: int  # the inode of the network namespace
    netns_cookie: int | None
    name: str
    ifindex: int
    up: bool
    sysctls: dict[str, str]  # SYSCTLS key: its value (those the kernel has)
    offloads: dict[str, bool]  # a MERGING_OFFLOADS the driver lets change: on
    pid: int  # the hopgate holding the interface
    pid_start: int | None  # its start time (clock ticks since boot): a reused pid is not it
    version: int = RECORD_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Record:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise RecordError(f"not JSON ({e})") from None
        if not isinstance(data, dict):
            raise RecordError("not a JSON object")
        if data.get("version") != RECORD_VERSION:
            raise RecordError(
                f"version {data.get('version')!r}; this hopgate reads version {RECORD_VERSION}"
            )

        def get(key: str, kind: type, optional: bool = False) -> Any:
            if key not in data:
                raise RecordError(f"no {key!r}")
            value = data[key]
            if value is None and optional:
                return None
            # bool is an int to Python, never to a record
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise RecordError(f"{key!r} is {value!r}, not {kind.__name__}")
            return value

        sysctls = get("sysctls", dict)
        for key, value in sysctls.items():
            if key not in SYSCTLS or not isinstance(value, str) or not _INTEGER.fullmatch(value):
                raise RecordError(f"sysctl {key!r}: {value!r}")
        offloads = get("offloads", dict)
        for key, value in offloads.items():
            if key not in MERGING_OFFLOADS or not isinstance(value, bool):
                raise RecordError(f"offload {key!r}: {value!r}")
        name = get("name", str)
        if not _IFNAME.fullmatch(name):
            raise RecordError(f"name {name!r}")
        return cls(
            netns=get("netns", int),
            netns_cookie=get("netns_cookie", int, optional=True),
            name=name,
            ifindex=get("ifindex", int),
            up=get("up", bool),
            sysctls=dict(sysctls),
            offloads=dict(offloads),
            pid=get("pid", int),
            pid_start=get("pid_start", int, optional=True),
        )

    def describe(self) -> str:
        """``disable_ipv6=0 arp_ignore=0 ..., rx-gro on, link up``, for the log."""
        sysctls = [(k, self.sysctls[k]) for k in SYSCTLS if k in self.sysctls]
        parts = [" ".join(f"{k.split('.', 1)[1]}={v}" for k, v in sysctls)]
        offloads = [(f, self.offloads[f]) for f in MERGING_OFFLOADS if f in self.offloads]
        parts += [f"{f} {'on' if on else 'off'}" for f, on in offloads]
        parts.append("link up" if self.up else "link down")
        return ", ".join(p for p in parts if p)


_INTEGER = re.compile(r"-?[0-9]+")
_IFNAME = re.compile(r"[^/:\s]{1,15}")  # as the kernel's dev_valid_name


def record_path(directory: Path, netns: Netns, name: str) -> Path:
    return directory / f"{netns.inode}-{name}.json"


def read_record(path: Path) -> Record | None:
    """The record at ``path``; None if there is none, or if it cannot be used
    (logged: the interface's current settings are then its originals)."""
    try:
        return Record.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, RecordError) as e:
        log.warning(
            "%s: ignoring it, unreadable (%s); the interface's current settings are"
            " taken as its originals",
            path,
            e,
        )
        return None


def write_record(path: Path, record: Record) -> None:
    """Write ``record`` at ``path`` whole or not at all, on disk before the
    interface changes (io/files.py)."""
    write_atomically(path, [record.to_json().encode()], 0o644)


def remove_record(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        log.warning("%s: cannot remove it: %s", path, e)


class Host(Protocol):
    """What taking an interface reads and changes: the kernel (``_Kernel``), or a
    stand-in in tests.  Sysctl paths are under /proc/sys."""

    def sysctl(self, path: str) -> str | None: ...  # None: the kernel has no such sysctl
    def set_sysctl(self, path: str, value: str) -> None: ...
    def offloads(self, name: str) -> dict[str, bool]: ...  # the MERGING_OFFLOADS it may change
    def set_offloads(self, name: str, on: dict[str, bool]) -> None: ...
    def link(self, index: int) -> tuple[str, bool] | None: ...  # name and up; None: gone
    def set_up(self, index: int, up: bool) -> None: ...


@dataclass
class Held:
    """An interface hopgate took: what it gives back, and where that is recorded.
    ``owner`` is False when another hopgate, still running, holds the interface
    (its record): this one then leaves both as they are."""

    originals: Record
    path: Path
    owner: bool = True


def snapshot(host: Host, link: Link, netns: Netns) -> Record:
    """The interface's settings now, as a record of this process."""
    sysctls = {}
    for key, (template, _) in SYSCTLS.items():
        value = host.sysctl(template.format(link.name))
        if value is not None:  # IPv6 compiled out, say
            sysctls[key] = value
    state = host.link(link.index)
    pid = os.getpid()
    return Record(
        netns=netns.inode,
        netns_cookie=netns.cookie,
        name=link.name,
        ifindex=link.index,
        up=bool(state and state[1]),
        sysctls=sysctls,
        offloads=host.offloads(link.name),
        pid=pid,
        pid_start=_start_time(pid),
    )


def judge(found: Record, now: Record, holder_alive: bool) -> Verdict:
    """What a record found at start is, against the interface ``now``:
    "other-netns" (left by a namespace that is gone, whose inode this one
    reuses), "other-link" (for another ifindex: the interface was re-created),
    "held" (by a hopgate still running), or "left" (by a hopgate that died
    holding the interface: its settings are the originals)."""
    if found.netns != now.netns or (
        found.netns_cookie is not None
        and now.netns_cookie is not None
        and found.netns_cookie != now.netns_cookie
    ):
        return "other-netns"
    if found.ifindex != now.ifindex or found.name != now.name:
        return "other-link"
    return "held" if holder_alive else "left"


def take_link(host: Host, link: Link, directory: Path, netns: Netns) -> Held:
    """Record what ``link`` is (or adopt the record a crashed hopgate left), then
    change it.  If changing fails, what changed is given back and the error
    raised."""
    now = snapshot(host, link, netns)
    path = record_path(directory, netns, link.name)
    originals = now
    found = read_record(path)
    if found is not None:
        holder_alive = (
            found.pid != now.pid
            and found.pid_start is not None
            and _start_time(found.pid) == found.pid_start
        )
        verdict = judge(found, now, holder_alive)
        if verdict == "left":
            log.warning(
                "%s: hopgate (pid %d) did not give it back (it did not stop cleanly):"
                " its settings before hopgate, recorded in %s, are taken as the originals"
                " (%s), not what it has now (%s)",
                link.name,
                found.pid,
                path,
                found.describe(),
                now.describe(),
            )
            originals = replace(found, pid=now.pid, pid_start=now.pid_start)
        elif verdict == "held":
            log.warning(
                "%s: held by another hopgate (pid %d, recorded in %s); this one will"
                " leave it and its record as they are when it stops",
                link.name,
                found.pid,
                path,
            )
            held = Held(found, path, owner=False)
            _change(host, link, now)
            return held
        elif verdict == "other-link":
            other = host.link(found.ifindex)
            if other is None:
                log.info(
                    "%s: %s is for ifindex %d, gone (this one is %d): replaced",
                    link.name,
                    path,
                    found.ifindex,
                    link.index,
                )
            else:
                log.warning(
                    "%s: %s is for ifindex %d, now %s, which hopgate left changed (%s"
                    " recorded): not given back; the record is replaced",
                    link.name,
                    path,
                    found.ifindex,
                    other[0],
                    found.describe(),
                )
        else:
            log.info("%s: %s is of a network namespace that is gone: replaced", link.name, path)
    try:
        write_record(path, originals)
    except OSError as e:
        log.warning(
            "%s: cannot record its settings in %s (%s); if hopgate dies without"
            " giving it back, they are lost",
            link.name,
            path,
            e,
        )
    held = Held(originals, path)
    try:
        _change(host, link, now)
    except BaseException:
        give_back(host, held)
        raise
    return held


def _change(host: Host, link: Link, now: Record) -> None:
    for key, value in now.sysctls.items():
        template, target = SYSCTLS[key]
        if value != target:
            path = template.format(link.name)
            try:
                host.set_sysctl(path, target)
            except OSError as e:
                log.debug("%s: %s", path, e)
    on = [f for f, enabled in now.offloads.items() if enabled]
    if on:
        try:
            host.set_offloads(link.name, dict.fromkeys(on, False))
        except Exception as e:  # noqa: BLE001 - a fixed feature: warn and go on
            log.warning("%s: could not turn off %s: %s", link.name, ", ".join(on), e)
    if not now.up:
        host.set_up(link.index, True)


def give_back(host: Host, held: Held) -> None:
    """Put the interface back as its record says and remove the record; a record
    whose interface is gone is removed.  Best effort: never raises."""
    r = held.originals
    if not held.owner:
        log.info("%s: left as it is, held by hopgate pid %d", r.name, r.pid)
        return
    try:
        _give_back(host, r)
    except Exception as e:  # noqa: BLE001 - best effort on the way out
        log.warning("%s: could not give it back: %s", r.name, e)
    remove_record(held.path)


def _give_back(host: Host, r: Record) -> None:
    state = host.link(r.ifindex)
    if state is None:
        log.info("%s: gone (ifindex %d); nothing to give back", r.name, r.ifindex)
        return
    name = state[0]  # renamed since, perhaps: the same link
    if not r.up:
        try:
            host.set_up(r.ifindex, False)
        except Exception as e:  # noqa: BLE001 - the link may be going
            log.debug("%s: %s", name, e)
    if any(r.offloads.values()):
        try:
            now = host.offloads(name)
            back = {f: True for f, on in r.offloads.items() if on and now.get(f) is False}
            if back:
                host.set_offloads(name, back)
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            log.debug("%s: %s", name, e)
    for key, old in r.sysctls.items():
        template, target = SYSCTLS[key]
        if old != target:
            path = template.format(name)
            try:
                host.set_sysctl(path, old)
            except OSError as e:
                log.debug("%s: %s", path, e)


def _start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot); None if it is not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields follow the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # dead, not yet reaped
        return None
    return int(fields[19])


def _netns_cookie() -> int | None:
    # asm-generic's number; parisc and sparc have their own
    if platform.machine().startswith(("parisc", "sparc")):
        return None
    option = getattr(socket, "SO_NETNS_COOKIE", 71)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            return int(struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, option, 8))[0])
    except OSError:  # before Linux 5.14
        return None


def _attr(msg: object, name: str) -> object:
    return msg.get_attr(name)  # type: ignore[attr-defined]


class _Kernel:
    """The Host that is the kernel: /proc/sys, ethtool's netlink, rtnetlink."""

    def __init__(self, ipr: IPRoute, ethtool: Ethtool) -> None:
        self.ipr = ipr
        self.ethtool = ethtool

    def sysctl(self, path: str) -> str | None:
        try:
            return (Path("/proc/sys") / path).read_text().strip()
        except OSError as e:
            log.debug("%s: %s", path, e)
            return None

    def set_sysctl(self, path: str, value: str) -> None:
        (Path("/proc/sys") / path).write_text(value)

    def offloads(self, name: str) -> dict[str, bool]:
        try:
            features = self.ethtool.get_features(name).features
        except Exception as e:  # noqa: BLE001 - no ethtool support: nothing to turn off
            log.debug("%s: cannot read features: %s", name, e)
            return {}
        found = {f: features.get(f) for f in MERGING_OFFLOADS}
        return {f: bool(x.enable) for f, x in found.items() if x is not None and x.available}

    def set_offloads(self, name: str, on: dict[str, bool]) -> None:
        features = self.ethtool.get_features(name)
        for feature, enable in on.items():
            features.features[feature].enable = enable
        self.ethtool.set_features(name, features)

    def link(self, index: int) -> tuple[str, bool] | None:
        try:
            msg = self.ipr.get_links(index)[0]
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        return str(_attr(msg, "IFLA_IFNAME")), bool(msg["flags"] & IFF_UP)

    def set_up(self, index: int, up: bool) -> None:
        self.ipr.link("set", index=index, state="up" if up else "down")


@contextlib.contextmanager
def _kernel() -> Iterator[_Kernel]:
    with IPRoute() as ipr:
        ethtool = Ethtool()
        try:
            yield _Kernel(ipr, ethtool)
        finally:
            ethtool.close()


SIOCGIFMTU = 0x8921  # linux/sockios.h
SIOCGIFHWADDR = 0x8927
_IFREQ = struct.Struct("16s16s")  # struct ifreq: the name, then the union


def link_now(name: str) -> tuple[bytes, int]:
    """``name``'s MAC and MTU as they are now, in the current network namespace:
    two ioctls, for a reload (``Interfaces.inspect``'s netlink dump costs
    milliseconds of the interpreter's time, which the forwarding loop waits
    for).  Raises PrepareError if there is no such interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = _IFREQ.pack(name.encode(), b"")
        try:
            mtu = struct.unpack_from("i", fcntl.ioctl(s, SIOCGIFMTU, req), 16)[0]
            hw = fcntl.ioctl(s, SIOCGIFHWADDR, req)
        except OSError as e:
            raise PrepareError(f"{name}: {e.strerror}") from None
    return hw[18:24], mtu


class Interfaces:
    """The interfaces hopgate runs on, in the current network namespace.
    ``record_dir``: where their records are (``RECORD_DIR`` by default)."""

    def __init__(
        self, names: list[str], mtus: dict[str, int | None], record_dir: Path | None = None
    ) -> None:
        self.names = names
        self.mtus = mtus
        self.record_dir = RECORD_DIR if record_dir is None else record_dir
        self._held: list[Held] = []
        self._netns: Netns | None = None

    def inspect(self) -> dict[str, Link]:
        """Check that every interface can be taken; raise one error naming all problems."""
        problems: list[str] = []
        links: dict[str, Link] = {}
        with IPRoute() as ipr:
            for name in self.names:
                link = self._inspect_one(ipr, name, problems)
                if link is not None:
                    links[name] = link
        if problems:
            raise PrepareError("cannot take the interfaces:\n  " + "\n  ".join(problems))
        return links

    def _inspect_one(self, ipr: IPRoute, name: str, problems: list[str]) -> Link | None:
        found = ipr.link_lookup(ifname=name)
        if not found:
            problems.append(f"{name}: no such interface in this network namespace")
            return None
        index = found[0]
        msg = ipr.get_links(index)[0]
        if msg["ifi_type"] != ARPHRD_ETHER:
            problems.append(f"{name}: not an Ethernet interface")
            return None
        mac_text = str(_attr(msg, "IFLA_ADDRESS"))
        mtu = int(str(_attr(msg, "IFLA_MTU")))
        info = _attr(msg, "IFLA_LINKINFO")
        kind = str(_attr(info, "IFLA_INFO_KIND") or "") if info is not None else ""
        link = Link(name, index, bytes.fromhex(mac_text.replace(":", "")), mtu, kind)
        want = self.mtus.get(name)
        if want is not None and want > mtu:
            problems.append(
                f"{name}: the configured MTU {want} is above the link's MTU {mtu}"
                f" (raise it with: ip link set {name} mtu {want})"
            )
        held = []
        for a in ipr.get_addr(index=index):
            address = str(_attr(a, "IFA_ADDRESS"))
            if a["family"] == socket.AF_INET6 and address.lower().startswith("fe80:"):
                continue  # the kernel's own link-local: goes with its IPv6
            held.append(f"{address}/{a['prefixlen']}")
        if held:
            problems.append(
                f"{name}: the kernel holds {', '.join(held)} on it; hopgate owns the"
                f" addresses of its interfaces (remove them: ip address flush dev {name})"
            )
        return link

    def take(self, links: dict[str, Link]) -> None:
        """Take every interface, each recorded before it changes.  If one cannot
        be taken, those taken are given back and the error raised."""
        self._netns = Netns.current()
        try:
            with _kernel() as host:
                for name in self.names:
                    self._held.append(take_link(host, links[name], self.record_dir, self._netns))
        except BaseException:
            self.release()
            raise

    def retake(self, name: str) -> Link:
        """Take ``name`` again, as at start: it was deleted and re-created (a
        new link, with the kernel's defaults).  Raises PrepareError if it cannot
        be taken (the same checks as at start)."""
        problems: list[str] = []
        with IPRoute() as ipr:
            link = self._inspect_one(ipr, name, problems)
        if problems or link is None:
            raise PrepareError("; ".join(problems))
        # The old link is gone with its settings: what is restored on exit is
        # what the new one had, recorded in place of the old one's.
        for held in self._held:
            if held.originals.name == name and held.owner:
                remove_record(held.path)
        self._held = [h for h in self._held if h.originals.name != name]
        netns = self._netns or Netns.current()
        with _kernel() as host:
            self._held.append(take_link(host, link, self.record_dir, netns))
        return link

    def release(self) -> None:
        """Give every interface back as it was found, and remove its record."""
        with _kernel() as host:
            for held in reversed(self._held):
                give_back(host, held)
        self._held.clear()
