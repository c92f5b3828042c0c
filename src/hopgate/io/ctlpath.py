"""A receive path of its own for hopgate's control traffic, like a router's
control-plane queue.

Each interface has two packet sockets.  The control socket's classic BPF
program accepts only
- ARP,
- IPv4 addressed to one of hopgate's interface addresses (not VIPs, LIPs or NAT
  addresses: traffic to those is data),
- IPv6 addressed to one of hopgate's interface addresses (the interface's own
  link-local included) or to a multicast group (Neighbor Discovery);
- IPv4 and IPv6 addressed to the interface's host addresses (io/hostport.py:
  a routing daemon's keepalives are control traffic too);
the data socket's program is the same with the answers swapped, so every frame
is read by exactly one of them.  The loop reads the control sockets first, each
round: answers to hopgate's health checks and ARP/ND do not wait behind (or
overflow with) a flood of data frames on the same interface.

A frame too short for a field the program reads goes to the data socket (a
classic BPF load past the end would drop it on both), as do VLAN-tagged frames
whose tag the kernel left in place.  The programs are built from the addresses
when the socket is opened (at start, and when a link comes back): hopgate's
addresses do not change at runtime today; if they ever do, the sockets must be
opened again with new programs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from hopgate.packet import addr as A
from hopgate.packet.ethernet import ETH_P_ARP, ETH_P_IP, ETH_P_IPV6
from hopgate.pipeline.ports import Port

# Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
LD_W_ABS = 0x20
LD_H_ABS = 0x28
LD_B_ABS = 0x30
LD_W_LEN = 0x80
JA = 0x05
JEQ_K = 0x15
JGE_K = 0x35
RET_K = 0x06
BPF_MAXINSNS = 4096
ACCEPT = 0x40000  # the whole frame

_V4_DST = 14 + 16
_V6_DST = 14 + 24

log = logging.getLogger(__name__)

Insn = tuple[int, int, int, int]  # code, jump if true, jump if false, k


class ProgramTooLongError(ValueError):
    pass


def _assemble(lines: Sequence[tuple[str | None, int, int, int, int | str]]) -> list[Insn]:
    """Lines of (label, code, jt, jf, k); an unconditional jump (JA) names its
    target label in k (a 32-bit offset: jumps of any length)."""
    where = {label: i for i, (label, *_rest) in enumerate(lines) if label}
    out = []
    for i, (_, code, jt, jf, k) in enumerate(lines):
        out.append((code, jt, jf, where[k] - i - 1 if isinstance(k, str) else k))
    if len(out) > BPF_MAXINSNS:
        raise ProgramTooLongError(
            f"{len(out)} instructions: too many addresses for the control path"
        )
    return out


def classifier(v4: Iterable[int], v6: Iterable[int], *, control: int, data: int) -> list[Insn]:
    """The program of the module's docstring, returning ``control`` for control
    frames and ``data`` for the others."""
    lines: list[tuple[str | None, int, int, int, int | str]] = [
        (None, LD_W_LEN, 0, 0, 0),
        (None, JGE_K, 1, 0, 14),
        (None, RET_K, 0, 0, data),  # shorter than an Ethernet header
        (None, LD_H_ABS, 0, 0, 12),  # ethertype
        (None, JEQ_K, 0, 1, ETH_P_ARP),
        (None, RET_K, 0, 0, control),
        (None, JEQ_K, 1, 0, ETH_P_IP),
        (None, JA, 0, 0, "not-v4"),
        (None, LD_W_LEN, 0, 0, 0),
        (None, JGE_K, 1, 0, _V4_DST + 4),
        (None, RET_K, 0, 0, data),
        (None, LD_W_ABS, 0, 0, _V4_DST),
    ]
    for a in sorted(set(v4)):
        lines += [(None, JEQ_K, 0, 1, a), (None, RET_K, 0, 0, control)]
    lines += [
        (None, RET_K, 0, 0, data),
        ("not-v4", JEQ_K, 1, 0, ETH_P_IPV6),
        (None, RET_K, 0, 0, data),
        (None, LD_W_LEN, 0, 0, 0),
        (None, JGE_K, 1, 0, _V6_DST + 16),
        (None, RET_K, 0, 0, data),
        (None, LD_B_ABS, 0, 0, _V6_DST),
        (None, JEQ_K, 0, 1, 0xFF),
        (None, RET_K, 0, 0, control),  # multicast: Neighbor Discovery and the like
    ]
    for a in sorted(set(v6)):
        words = [(a >> (96 - 32 * i)) & 0xFFFFFFFF for i in range(4)]
        # Each word that differs skips to the next address: 8 - 2i instructions on.
        for i, w in enumerate(words):
            lines += [(None, LD_W_ABS, 0, 0, _V6_DST + 4 * i), (None, JEQ_K, 0, 7 - 2 * i, w)]
        lines.append((None, RET_K, 0, 0, control))
    lines.append((None, RET_K, 0, 0, data))
    return _assemble(lines)


def programs(v4: Iterable[int], v6: Iterable[int]) -> tuple[list[Insn], list[Insn]]:
    """(control socket's program, data socket's program): complements."""
    v4, v6 = list(v4), list(v6)
    return (
        classifier(v4, v6, control=ACCEPT, data=0),
        classifier(v4, v6, control=0, data=ACCEPT),
    )


def own_addresses(ports: list[Port], port: int) -> tuple[list[int], list[int]]:
    """hopgate's interface addresses, as the control path of ``port`` takes them:
    every interface's IPv4 and global IPv6 addresses, and the link-local
    addresses and the host addresses of ``port`` itself (another port's host
    addresses are not served here)."""
    v4 = [a.addr for p in ports for a in p.v4]
    v6 = [a.addr for p in ports for a in p.v6 if not A.v6_is_link_local(a.addr)]
    here = ports[port]
    v6 += [a.addr for a in here.v6 if A.v6_is_link_local(a.addr)] + [here.link_local]
    v4 += sorted(here.v4_host)
    v6 += sorted(here.v6_host)
    return v4, v6


def filters_for(
    ports: list[Port], port: int, *, check: bool = True
) -> Callable[[], tuple[list[Insn], list[Insn]]] | None:
    """What PacketSocket takes for ``port``: the programs, built from the
    addresses as they are when the socket is opened (a re-created interface's
    new link-local included).  None, with a warning, if there are too many
    addresses for one program: that interface then has one socket.
    ``check``: build the programs once to see (not when the addresses are
    known to fit: a reload that left them as they were)."""
    try:
        if check:
            programs(*own_addresses(ports, port))
    except ProgramTooLongError as e:
        log.warning("%s: no control path: %s", ports[port].name, e)
        return None
    return lambda: programs(*own_addresses(ports, port))
