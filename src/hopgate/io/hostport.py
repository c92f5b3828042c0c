"""The host port: a kernel interface for the host's own addresses on one of
hopgate's links (as DPVS's KNI), so that a routing daemon, SSH or monitoring
can speak on a link whose addresses hopgate owns.

The kernel holds no address on hopgate's interfaces (io/netprep.py).  An
``[[interface]]`` that names ``host_addresses`` gets a TAP device
(``host_name``, by default ``h-`` and the interface's name) holding them: the
pipeline passes up what arrives on the link for them (``ToHost`` actions:
ARP and Neighbor Solicitations for them, IP to them), and what the kernel sends
on the TAP device goes out of the link as it is (``Router.from_host``).

The device
- is not persistent: it goes when its descriptor is closed, so when hopgate
  ends however it ends (no record to give back, unlike netprep's);
- has the port's MAC, so that the kernel's frames leave as the port's and the
  neighbours' answers come to it, and the port's MTU;
- makes no IPv6 link-local address (``addr_gen_mode`` none): from the same MAC
  the kernel would make hopgate's own EUI-64 one (pipeline/ports.py), which
  hopgate answers for; and does no duplicate address detection
  (``accept_dad`` 0: the solicitations would come back as hopgate's own
  frames never do), nor take router advertisements or forward;
- answers ARP only for its own addresses (``arp_ignore`` 1), from the address
  on the target's subnet (``arp_announce`` 2);
- follows the link: carrier off while the port's link is down
  (``TUNSETCARRIER``), so that a daemon on it sees the link go down.

Reads and writes never raise: a write that finds the device's queue full
(EAGAIN, ENOBUFS) or the device down is counted; a device deleted under
hopgate is reported (``gone``) and read no more.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hopgate.io.netprep import PrepareError
from hopgate.packet import ethernet
from hopgate.pipeline.model import IPInterface

log = logging.getLogger(__name__)

# linux/if_tun.h
TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
TUNSETCARRIER = 0x400454E2  # _IOW('T', 226, int)
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
_IFREQ = struct.Struct("16sH")  # struct ifreq: the name, then ifr_flags
_INT = struct.Struct("i")
# A read takes one frame whole: the largest the device can hand over (its MTU
# is at most 65535) with its Ethernet header and two VLAN tags.
READ_SIZE = 65535 + ethernet.HEADER_LEN + ethernet.TAG_LEN * ethernet.MAX_TAGS

# The device's sysctls (/proc/sys, "{}": its name), set before it is brought
# up: addr_gen_mode must be, or the kernel has made its link-local address.
SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net/ipv6/conf/{}/addr_gen_mode", "1"),  # IN6_ADDR_GEN_MODE_NONE
    ("net/ipv6/conf/{}/accept_dad", "0"),
    ("net/ipv6/conf/{}/accept_ra", "0"),
    ("net/ipv6/conf/{}/forwarding", "0"),
    ("net/ipv4/conf/{}/forwarding", "0"),
    ("net/ipv4/conf/{}/arp_ignore", "1"),
    ("net/ipv4/conf/{}/arp_announce", "2"),
)


class HostPortError(PrepareError):
    """The host port cannot be made (hopgate does not start)."""


@dataclass
class HostIoCounters:
    """What happened at the TAP device, below the pipeline (whose ``to_host``
    and ``from_host`` count the frames it passed up and took)."""

    rx_frames: int = 0  # read from the device: the host's frames
    tx_frames: int = 0  # written to the device
    tx_dropped_busy: int = 0  # EAGAIN / ENOBUFS: the kernel did not take it
    tx_errors: int = 0  # the device is down (EIO) or gone
    rx_errors: int = 0  # a read failed (the device was deleted)


class HostPort:
    """One TAP device, the host's side of ``port`` (a port's name)."""

    def __init__(self, name: str, port: str, fd: int, addresses: tuple[IPInterface, ...]) -> None:
        self.name = name
        self.port = port
        self.addresses = addresses
        self.counters = HostIoCounters()
        self.carrier = True
        self.gone = False  # deleted under hopgate: no longer read
        self._fd = fd

    @classmethod
    def create(
        cls, name: str, port: str, mac: bytes, mtu: int, addresses: tuple[IPInterface, ...]
    ) -> HostPort:
        """Make the device ``name`` for ``port``, with ``mac``, ``mtu`` and
        ``addresses``, up.  Raises HostPortError (an interface of that name is
        there already, no TUN/TAP driver, the kernel refuses an address)."""
        with IPRoute() as ipr:
            if ipr.link_lookup(ifname=name):
                raise HostPortError(
                    f"{name}: an interface of that name exists already; it would be"
                    f" {port}'s host port (remove it, or set host_name to another name)"
                )
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise HostPortError(f"{name}: cannot open {TUN_DEVICE}: {e.strerror}") from None
        try:
            fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI))
            host = cls(name, port, fd, addresses)
            host._configure(mac, mtu)
        except OSError as e:
            os.close(fd)
            raise HostPortError(f"{name}: cannot make {port}'s host port: {e.strerror}") from None
        except NetlinkError as e:
            os.close(fd)
            raise HostPortError(
                f"{name}: cannot make {port}'s host port: {os.strerror(e.code)}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return host

    def _configure(self, mac: bytes, mtu: int) -> None:
        v6 = any(a.version == 6 for a in self.addresses)
        for template, value in (*SYSCTLS, ("net/ipv6/conf/{}/disable_ipv6", "0" if v6 else "1")):
            path = Path("/proc/sys") / template.format(self.name)
            if path.exists():  # a kernel without IPv6 has none of its sysctls
                path.write_text(value)
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=self.name)[0]
            ipr.link("set", index=index, address=ethernet.format_mac(mac), mtu=mtu)
            ipr.link("set", index=index, state="up")
            for a in self.addresses:
                ipr.addr("add", index=index, address=str(a.ip), prefixlen=a.network.prefixlen)

    def fileno(self) -> int:
        return self._fd

    def read(self) -> bytes | None:
        """The next frame the host sent, or None when there is none (or the
        device is gone: ``gone`` says so)."""
        if self._fd < 0:
            return None
        try:
            frame = os.read(self._fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            self.counters.rx_errors += 1
            if e.errno in (errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EBADF):
                self.gone = True
            return None
        self.counters.rx_frames += 1
        return frame

    def write(self, frame: bytes | bytearray | memoryview) -> bool:
        """Give ``frame`` to the host; whether the kernel took it (counted if not)."""
        if self._fd < 0:
            self.counters.tx_errors += 1
            return False
        try:
            os.write(self._fd, frame)
        except (BlockingIOError, InterruptedError):
            self.counters.tx_dropped_busy += 1
            return False
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                self.counters.tx_dropped_busy += 1
            else:
                self.counters.tx_errors += 1
            return False
        self.counters.tx_frames += 1
        return True

    def set_carrier(self, on: bool) -> None:
        """The port's link went down (off) or came back (on): the device's
        carrier follows, for what runs on it to see.  Logged, never raised."""
        if self._fd < 0 or on == self.carrier:
            return
        try:
            fcntl.ioctl(self._fd, TUNSETCARRIER, _INT.pack(int(on)))
        except OSError as e:
            log.warning("%s: cannot turn the carrier %s: %s", self.name, "on" if on else "off", e)
            return
        self.carrier = on

    def set_mac(self, mac: bytes) -> None:
        """The port has a new MAC (its interface was re-created): the device
        takes it too.  Logged, never raised."""
        try:
            with IPRoute() as ipr:
                ipr.link("set", ifname=self.name, address=ethernet.format_mac(mac))
        except (OSError, NetlinkError) as e:
            log.warning("%s: cannot take %s's new MAC: %s", self.name, self.port, e)

    def snapshot(self) -> dict[str, Any]:
        """For status: the device, its addresses, its carrier, its counters."""
        return {
            "name": self.name,
            "addresses": [str(a) for a in self.addresses],
            "carrier": self.carrier,
            "gone": self.gone,
            "io": asdict(self.counters),
        }

    def close(self) -> None:
        """The device goes with its descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
