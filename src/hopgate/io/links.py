"""Link events: the daemon's interfaces going down, coming back, deleted and re-created.

An rtnetlink socket subscribed to the link group (RTMGRP_LINK) sits in the
loop's epoll set; pyroute2 parses what it reads.  ``LinkWatch`` (pure: link
messages in, decisions out) follows each of hopgate's interfaces by name and
by index:

- admin down (IFF_UP clear), no carrier (IFF_LOWER_UP clear), deleted, or
  renamed away: ``down`` — the loop closes the interface's packet socket and
  tells the router, which forgets the link's neighbours and drops what is
  routed there;
- an interface appearing under the name with a new index (deleted and
  re-created): ``prepare`` — the loop takes it as at start (io/netprep.py:
  sysctls, GRO/LRO off, link up);
- up with carrier again: ``up`` — the loop opens the socket again, bound to
  the index the link has now, and forwarding resumes.

A full rtnetlink socket buffer (ENOBUFS: events were lost) is answered with a
dump of every link (``resync``), as is the start, so that a change between the
inspection of the interfaces and the subscription is not missed.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from typing import Any, NamedTuple

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWLINK, RTMGRP_LINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_LOWER_UP, IFF_UP
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

log = logging.getLogger(__name__)

_RCVBUF = 1024 * 1024


@dataclass(frozen=True)
class LinkInfo:
    """What rtnetlink says of one link."""

    index: int
    name: str
    up: bool  # administratively (IFF_UP)
    carrier: bool  # IFF_LOWER_UP
    mac: bytes | None = None
    deleted: bool = False

    @property
    def ready(self) -> bool:
        return self.up and self.carrier and not self.deleted


def link_info(msg: Any) -> LinkInfo | None:
    """A LinkInfo from a parsed RTM_NEWLINK / RTM_DELLINK message (None for others)."""
    kind = msg["header"]["type"]
    if (
        kind not in (RTM_NEWLINK, RTM_DELLINK)
        or msg.get("family", socket.AF_UNSPEC) != socket.AF_UNSPEC
    ):
        return None
    name = msg.get_attr("IFLA_IFNAME")
    if name is None:
        return None
    flags = int(msg["flags"])
    mac_text = msg.get_attr("IFLA_ADDRESS")
    mac = None
    if isinstance(mac_text, str) and len(mac_text) == 17:
        mac = bytes.fromhex(mac_text.replace(":", ""))
    return LinkInfo(
        index=int(msg["index"]),
        name=str(name),
        up=bool(flags & IFF_UP),
        carrier=bool(flags & IFF_LOWER_UP),
        mac=mac,
        deleted=kind == RTM_DELLINK,
    )


@dataclass
class LinkStatus:
    """One of hopgate's interfaces, as the link events left it."""

    name: str
    port: int
    ifindex: int | None
    forwarding: bool = True  # the socket is open and the router sends there
    state: str = "up"  # up, admin-down, no-carrier, gone
    downs: int = 0
    ups: int = 0
    recreated: int = 0
    prepared: bool = True  # taken (sysctls, offloads) since it last appeared

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "ifindex": self.ifindex,
            "link_downs": self.downs,
            "link_ups": self.ups,
            "recreated": self.recreated,
        }


class Change(NamedTuple):
    kind: str  # "down", "prepare", "up"
    port: int
    info: LinkInfo
    why: str


class LinkWatch:
    """Decides, from link messages, when one of hopgate's interfaces goes down,
    needs taking again, or comes back."""

    def __init__(self, links: dict[str, tuple[int, int]]) -> None:
        """``links``: name -> (port, ifindex) of the interfaces taken at start
        (their sockets open)."""
        self.status = {name: LinkStatus(name, port, index) for name, (port, index) in links.items()}

    def by_port(self, port: int) -> LinkStatus | None:
        for st in self.status.values():
            if st.port == port:
                return st
        return None

    def update(self, info: LinkInfo) -> list[Change]:
        changes: list[Change] = []
        for other in self.status.values():
            if other.ifindex == info.index and (info.deleted or info.name != other.name):
                why = "deleted" if info.deleted else f"renamed to {info.name}"
                other.ifindex = None
                other.state = "gone"
                self._down(other, info, why, changes)
        st = self.status.get(info.name)
        if st is None or info.deleted:
            return changes
        if st.ifindex != info.index:
            # Another interface under the name: re-created (or deleted and
            # re-created faster than we heard of the deletion).
            self._down(st, info, "replaced", changes)
            st.ifindex = info.index
            st.recreated += 1
            st.prepared = False
        if not st.prepared:
            # The loop takes it, then calls prepared(); if taking it fails, it
            # calls failed(), and the next message about it tries again.
            st.prepared = True
            changes.append(Change("prepare", st.port, info, "re-created"))
            return changes
        if info.ready:
            st.state = "up"
            if not st.forwarding:
                st.forwarding = True
                st.ups += 1
                changes.append(Change("up", st.port, info, "link up"))
        else:
            st.state = "admin-down" if not info.up else "no-carrier"
            self._down(st, info, "link down" if not info.up else "carrier lost", changes)
        return changes

    def _down(self, st: LinkStatus, info: LinkInfo, why: str, changes: list[Change]) -> None:
        if st.forwarding:
            st.forwarding = False
            st.downs += 1
            changes.append(Change("down", st.port, info, why))

    def prepared(self, port: int, info: LinkInfo) -> list[Change]:
        """The loop took the re-created link: whether it comes up now."""
        st = self.by_port(port)
        if st is None or st.ifindex != info.index:
            return []
        return self.update(info)

    def failed(self, port: int, *, prepare: bool = False) -> None:
        """Taking the link (``prepare``) or opening its socket failed: it stays
        down; the next message about it tries again."""
        st = self.by_port(port)
        if st is None:
            return
        if st.forwarding:
            st.forwarding = False
            st.ups -= 1  # it never came up
        if prepare:
            st.prepared = False

    def vanished(self, present: set[str]) -> list[Change]:
        """After a dump: the interfaces not in it are gone."""
        changes: list[Change] = []
        for st in self.status.values():
            if st.name not in present and st.ifindex is not None:
                changes += self.update(LinkInfo(st.ifindex, st.name, False, False, deleted=True))
        return changes


class LinkMonitor:
    """The rtnetlink socket, in the loop's epoll set."""

    def __init__(self, watch: LinkWatch) -> None:
        self.watch = watch
        self.overruns = 0
        self._marshal = MarshalRtnl()
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            s.bind((0, RTMGRP_LINK))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self.sock = s

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[Change]:
        """What the messages waiting say (a dump of every link after an overrun)."""
        changes: list[Change] = []
        overrun = False
        for _ in range(1000):  # bounded: a storm of events cannot hold the loop
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overruns += 1
                    overrun = True
                    continue
                log.warning("link events: %s", e)
                break
            changes += self.parse(data)
        if overrun:
            log.warning("link events were lost (rtnetlink overrun): reading every link")
            changes += self.resync()
        return changes

    def parse(self, data: bytes) -> list[Change]:
        changes: list[Change] = []
        for msg in self._marshal.parse(data):
            info = link_info(msg)
            if info is not None:
                changes += self.watch.update(info)
        return changes

    def resync(self) -> list[Change]:
        """Every link as it is now, fed to the watch as if it had been an event."""
        changes: list[Change] = []
        present: set[str] = set()
        try:
            with IPRoute() as ipr:
                msgs = list(ipr.get_links())
        except Exception as e:  # noqa: BLE001 - try again at the next event
            log.warning("link events: cannot read the links: %s", e)
            return changes
        for msg in msgs:
            info = link_info(msg)
            if info is not None:
                present.add(info.name)
                changes += self.watch.update(info)
        changes += self.watch.vanished(present)
        return changes

    def close(self) -> None:
        self.sock.close()
