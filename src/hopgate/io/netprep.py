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
Everything changed is recorded and restored on exit.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.ethtool import Ethtool
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

log = logging.getLogger(__name__)

ARPHRD_ETHER = 1  # linux/if_arp.h (neither socket nor pyroute2 names it)
# Receive offloads that merge frames; what hopgate must not be shown.
MERGING_OFFLOADS = ("rx-gro", "rx-lro", "rx-gro-hw", "rx-gro-list", "rx-udp-gro-forwarding")
_SYSCTLS = (
    ("net/ipv6/conf/{}/disable_ipv6", "1"),
    ("net/ipv4/conf/{}/arp_ignore", "8"),
    ("net/ipv4/conf/{}/forwarding", "0"),
    ("net/ipv4/conf/{}/rp_filter", "1"),
)


class PrepareError(Exception):
    pass


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    mac: bytes
    mtu: int
    kind: str = ""  # the driver's kind ("veth", "bridge"...; "" for a physical device)


@dataclass
class _Taken:
    link: Link
    sysctls: dict[str, str] = field(default_factory=dict)
    features: dict[str, bool] = field(default_factory=dict)
    was_down: bool = False


def _attr(msg: object, name: str) -> object:
    return msg.get_attr(name)  # type: ignore[attr-defined]


class Interfaces:
    """The interfaces hopgate runs on, in the current network namespace."""

    def __init__(self, names: list[str], mtus: dict[str, int | None]) -> None:
        self.names = names
        self.mtus = mtus
        self._taken: list[_Taken] = []

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
        with IPRoute() as ipr:
            ethtool = Ethtool()
            try:
                for name in self.names:
                    self._take_one(ipr, ethtool, links[name])
            finally:
                ethtool.close()

    def retake(self, name: str) -> Link:
        """Take ``name`` again, as at start: it was deleted and re-created (a
        new link, with the kernel's defaults).  Raises PrepareError if it cannot
        be taken (the same checks as at start)."""
        problems: list[str] = []
        with IPRoute() as ipr:
            link = self._inspect_one(ipr, name, problems)
            if problems or link is None:
                raise PrepareError("; ".join(problems))
            # The old link is gone with its settings: what is restored on exit
            # is what the new one had.
            self._taken = [t for t in self._taken if t.link.name != name]
            ethtool = Ethtool()
            try:
                self._take_one(ipr, ethtool, link)
            finally:
                ethtool.close()
        return link

    def _take_one(self, ipr: IPRoute, ethtool: Ethtool, link: Link) -> None:
        name = link.name
        taken = _Taken(link)
        self._taken.append(taken)
        for template, value in _SYSCTLS:
            path = Path("/proc/sys") / template.format(name)
            try:
                old = path.read_text().strip()
                if old != value:
                    path.write_text(value)
                    taken.sysctls[str(path)] = old
            except OSError as e:  # IPv6 compiled out, say
                log.debug("%s: %s", path, e)
        self._offloads_off(ethtool, taken)
        msg = ipr.get_links(link.index)[0]
        if not msg["flags"] & IFF_UP:
            taken.was_down = True
            ipr.link("set", index=link.index, state="up")

    def _offloads_off(self, ethtool: Ethtool, taken: _Taken) -> None:
        name = taken.link.name
        try:
            features = ethtool.get_features(name)
        except Exception as e:  # noqa: BLE001 - no ethtool support: nothing to turn off
            log.debug("%s: cannot read features: %s", name, e)
            return
        changed = False
        for feature in MERGING_OFFLOADS:
            f = features.features.get(feature)
            if f is not None and f.enable and f.available:
                taken.features[feature] = True
                f.enable = False
                changed = True
        if changed:
            try:
                ethtool.set_features(name, features)
            except Exception as e:  # noqa: BLE001 - a fixed feature: warn and go on
                log.warning("%s: could not turn off %s: %s", name, ", ".join(taken.features), e)
                taken.features.clear()

    def release(self) -> None:
        """Give every interface back as it was found."""
        with IPRoute() as ipr:
            ethtool = Ethtool()
            try:
                for taken in reversed(self._taken):
                    if taken.was_down:
                        try:
                            ipr.link("set", index=taken.link.index, state="down")
                        except Exception as e:  # noqa: BLE001 - the link may be gone
                            log.debug("%s: %s", taken.link.name, e)
                    if taken.features:
                        try:
                            features = ethtool.get_features(taken.link.name)
                            for feature, enable in taken.features.items():
                                features.features[feature].enable = enable
                            ethtool.set_features(taken.link.name, features)
                        except Exception as e:  # noqa: BLE001 - best effort on the way out
                            log.debug("%s: %s", taken.link.name, e)
                    for path, old in taken.sysctls.items():
                        try:
                            Path(path).write_text(old)
                        except OSError as e:
                            log.debug("%s: %s", path, e)
            finally:
                ethtool.close()
        self._taken.clear()
