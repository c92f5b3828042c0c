"""``hopgate run``: take the configured interfaces and route until told to stop."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from typing import Any

from hopgate import __version__
from hopgate.control import backends, bgp, conns, statefile, views
from hopgate.control.admin import DRAIN, UNDRAIN, Action, AdminServer
from hopgate.control.config import Config, parse_listen
from hopgate.control.lbcontrol import RingWorker
from hopgate.control.reload import Outcome, Reloader, ReloadError
from hopgate.io import ctlpath
from hopgate.io.afpacket import PacketSocket
from hopgate.io.gcwatch import GcWatch
from hopgate.io.hostport import HostPort
from hopgate.io.links import LinkMonitor, LinkWatch
from hopgate.io.loop import Loop
from hopgate.io.netprep import Interfaces
from hopgate.packet.addr import ip_str
from hopgate.pipeline.lb.runtime import Overrides
from hopgate.pipeline.nat import Nat, persist
from hopgate.pipeline.router import Router
from hopgate.xdp import dataplane
from hopgate.xdp.dataplane import FastPath

log = logging.getLogger(__name__)


def snapshot(
    router: Router,
    loop: Loop,
    sockets: list[PacketSocket],
    started: float,
    config_path: str,
    fastpath: FastPath | None = None,
    sections: Mapping[str, Callable[[], Any]] | None = None,
) -> dict[str, Any]:
    """The daemon's whole visible state, as plain data (runs in the loop thread);
    ``sections``: more of it, each from its own part (BGP, the collector)."""
    state = views.router(router.state())
    counters = router.counters.snapshot()
    dataplane = fastpath.snapshot() if fastpath is not None else {"mode": "afpacket"}
    fast = dataplane.pop("ports", None) or [None] * len(sockets)
    interfaces = []
    for iface, ports, sock, fp in zip(
        state["interfaces"], counters["ports"], sockets, fast, strict=True
    ):
        merged = dict(iface)
        merged.update(ports)
        merged["io"] = asdict(sock.update_stats())
        merged["link"] = loop.link_status(router.port_by_name[iface["name"]])
        host = loop.host_status(router.port_by_name[iface["name"]])
        if host is not None:
            merged["host"] = host
        if fp is not None:
            # What the XDP program did with the frames it received there.
            merged["fastpath"] = fp
        interfaces.append(merged)
    del counters["ports"]
    out: dict[str, Any] = {
        "version": __version__,
        "pid": os.getpid(),
        "config": config_path,
        "uptime_seconds": round(time.monotonic() - started, 3),
        "interfaces": interfaces,
        "routes": state["routes"],
        "neighbours": state["neighbours"],
        "reassembly": state["reassembly"],
        "nat": state["nat"],
        "relay": state["relay"],
        "internal_errors": loop.internal_errors,
        "dataplane": dataplane,
    }
    chance = (state["relay"] or {}).get("second_chance")
    if chance is not None:
        # The peers' copies the XDP program forwarded never reached the pipeline.
        fast_copies = dataplane.get("copies_forwarded", 0)
        chance["copies_received"] += fast_copies
        chance["copies_forwarded"] += fast_copies
    for key, part in (sections or {}).items():
        out[key] = part()
    out.update(counters)
    return out


# How long a checkpoint waits on the loop for its next slice before giving up.
CHECKPOINT_STALL = 10.0


def _checkpoint(loop: Loop) -> Iterator[bytes] | None:
    """What a checkpoint writes: the connections, turned into text by the loop a
    slice at a time, between its batches of frames (None without NAT or services)."""
    nat = loop.router.nat
    if nat is None:
        return None
    return loop.mailbox.start(persist.lines(nat, time.monotonic(), time.time())).chunks(
        CHECKPOINT_STALL
    )


def _reload(reloader: Reloader, by: str) -> Outcome:
    """Reload, logging what it did, or why it did nothing (raises ReloadError)."""
    try:
        out = reloader()
    except ReloadError as e:
        log.error("reload (%s): nothing changed, the file cannot be applied: %s", by, e)
        raise
    for line in out.lines():
        log.info("reload (%s): %s", by, line)
    log.info("reload (%s): forwarding held for %.3f ms", by, out.stall * 1000)
    return out


def _reload_in_background(reloader: Reloader) -> None:
    """SIGHUP: the reload runs in a thread of its own (the loop, which runs the
    signal's handler, runs the swap)."""

    def run() -> None:
        try:
            _reload(reloader, "SIGHUP")
        except ReloadError:
            pass  # logged
        except Exception:
            log.exception("reload (SIGHUP) failed")

    threading.Thread(target=run, name="reload", daemon=True).start()


def _end_connections(loop: Loop) -> int:
    """Every connection ended (a drain's timeout), as ``hopgate conns flush``
    does: a slice at a time in the loop; how many."""
    steps = conns.job("flush", loop.router.nat, time.monotonic, {})
    text = b"".join(loop.mailbox.start(steps).chunks(CHECKPOINT_STALL))
    return int(json.loads(text).get("deleted", 0))


def _drain_request(announcer: bgp.Announcer, query: dict[str, str]) -> dict[str, Any]:
    """POST /drain?timeout=S: raises ValueError for a timeout that is not one."""
    raw = query.get("timeout")
    unknown = set(query) - {"timeout"}
    if unknown:
        raise ValueError(f"unknown parameter {', '.join(sorted(unknown))}: drain takes timeout")
    timeout = None
    if raw not in (None, ""):
        try:
            timeout = float(raw)
        except ValueError:
            raise ValueError(f"timeout: {raw!r} is not a number of seconds") from None
        if not 0 < timeout <= 86400:
            raise ValueError(f"timeout: {raw} is not between 0 and 86400 seconds")
    return announcer.drain(timeout)


def _withdraw_then_stop(announcer: bgp.Announcer, loop: Loop) -> Callable[[], None]:
    """SIGTERM and SIGINT with [bgp]: BIRD is stopped first, while the loop
    still carries its last words (the notifications that close its sessions,
    so the routers withdraw this node at once), then the loop.  A second
    signal stops the loop at once."""
    started = threading.Event()

    def withdraw() -> None:
        try:
            announcer.stop()
        except Exception:
            log.exception("bgp: stopping BIRD failed")
        loop.mailbox.stop()

    def on_signal() -> None:
        if started.is_set():
            loop.mailbox.stop()
            return
        started.set()
        log.info("stopping: BGP sessions closed first")
        threading.Thread(target=withdraw, name="bgp-stop", daemon=True).start()

    return on_signal


def _bgp_actions(announcer: bgp.Announcer | None) -> dict[str, Action]:
    """``hopgate drain`` and ``undrain``: with ``[bgp]`` only."""
    if announcer is None:

        def no_bgp(query: dict[str, str]) -> dict[str, Any]:
            raise LookupError("this hopgate has no [bgp]: it announces nothing to withdraw")

        return {DRAIN: no_bgp, UNDRAIN: no_bgp}
    return {
        DRAIN: lambda query: _drain_request(announcer, query),
        UNDRAIN: lambda query: announcer.undrain(),
    }


def _overrides(path: str) -> Overrides:
    """What the operator had changed of the backends before the last stop."""
    try:
        with open(path, "rb") as f:
            found = persist.overrides(f.readline())
    except OSError:
        return Overrides()
    for (fam, _, vip, port, address, bport), o in found.changed():
        weight = f", weight {o.weight}" if o.weight is not None else ""
        log.info(
            "state: backend %s:%d of %s:%d kept as the admin left it: %s%s",
            ip_str(fam, address),
            bport,
            ip_str(fam, vip),
            port,
            o.admin.value,
            weight,
        )
    return found


def _restore(nat: Nat, path: str, now: float) -> None:
    """Put back the connections the last hopgate left in ``path``, if any."""
    try:
        with open(path, "rb") as f:
            done = persist.restore(nat, f, now, time.time())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        log.warning("state: cannot restore the connections from %s: %s", path, e)
        return
    age = f", written {time.time() - done.written:.1f} s ago" if done.written else ""
    log.info("state: connections from %s%s: %s", path, age, done.summary())


def _save(nat: Nat, path: str, exact: bool) -> None:
    """Leave the connections in ``path`` for the next hopgate (``exact``: their
    trackers are all in hand, see persist.header)."""
    try:
        lines = persist.lines(nat, time.monotonic(), time.time(), exact=exact)
        size = statefile.write(path, lines)
    except OSError as e:
        log.error("state: cannot write the connections to %s: %s", path, e)
        return
    log.info("state: %d connections written to %s (%d bytes)", len(nat.table), path, size)


def run(cfg: Config, config_path: str) -> None:
    names = [i.name for i in cfg.interface]
    interfaces = Interfaces(names, {i.name: i.mtu for i in cfg.interface})
    links = interfaces.inspect()
    spec = cfg.router_spec({n: (link.mac, link.mtu) for n, link in links.items()})
    started = time.monotonic()
    # Maglev tables are computed by the control plane, not in the loop.
    rings = RingWorker()
    state_path = cfg.state.file or statefile.default_path(cfg.admin.socket)
    router = Router(spec, now=started, on_ring=rings.wake, overrides=_overrides(state_path))
    if router.nat is not None:
        _restore(router.nat, state_path, started)
    sockets: list[PacketSocket] = []
    admin: AdminServer | None = None
    loop: Loop | None = None
    fastpath: FastPath | None = None
    checkpoints: statefile.Checkpoints | None = None
    hosts: dict[int, HostPort] = {}
    announcer: bgp.Announcer | None = None
    bgp_spec = cfg.bgp_spec()
    gcwatch = GcWatch()
    gcwatch.start()
    interfaces.take(links)
    try:
        for port in router.ports:
            sockets.append(
                PacketSocket(
                    port.name,
                    links[port.name].index,
                    port.max_frame,
                    ctlpath.filters_for(router.ports, port.index),
                )
            )
        # The host ports (io/hostport.py): the kernel's interfaces for host_addresses.
        for iface in cfg.interface:
            host_name = iface.host_port()
            if host_name is not None:
                p = router.ports[router.port_by_name[iface.name]]
                hosts[p.index] = HostPort.create(
                    host_name, p.name, p.mac, p.mtu, tuple(iface.host_interfaces())
                )
                log.info(
                    "%s: host port %s with %s",
                    p.name,
                    host_name,
                    ", ".join(iface.host_addresses),
                )
        fastpath = dataplane.start(
            cfg.dataplane.mode,
            cfg.dataplane.xdp_attach,
            router,
            {p.index: links[p.name].index for p in router.ports},
            veths=[n for n, link in links.items() if link.kind == "veth"],
            handover=cfg.dataplane.handover,
        )
        watch = LinkWatch({p.name: (p.index, links[p.name].index) for p in router.ports})
        loop = Loop(
            router,
            sockets,
            links=LinkMonitor(watch),
            prepare=interfaces.retake,
            fastpath=fastpath,
            hosts=hosts,
        )
        the_loop, the_fastpath = loop, fastpath
        # The router running: a reload replaces it (control/reload.py).
        current = lambda: the_loop.router  # noqa: E731
        checkpoints = statefile.Checkpoints(
            state_path,
            cfg.state.checkpoint_interval,
            # The loop turns the table into text a slice at a time, between
            # its batches of frames; this thread writes what it yields.
            lambda: _checkpoint(the_loop),
        )
        if bgp_spec is not None:
            announcer = bgp.Announcer(
                bgp.Bird(bgp_spec, bgp.Paths.beside(cfg.admin.socket)),
                current,
                loop.call,
                end_connections=lambda: _end_connections(the_loop),
            )
        the_announcer = announcer

        def applied(new: Config) -> None:
            spec = new.bgp_spec()
            if the_announcer is not None and spec is not None:
                the_announcer.reconfigure(spec)

        reloader = Reloader(config_path, cfg, loop, rings, fastpath, applied)
        handlers = {
            signal.SIGHUP: lambda: _reload_in_background(reloader),
            signal.SIGUSR1: checkpoints.now,
        }
        if announcer is not None:
            stop = _withdraw_then_stop(announcer, loop)
            handlers |= {signal.SIGTERM: stop, signal.SIGINT: stop}
        loop.install_signal_handlers(handlers)
        if router.nat is not None and any(s.uses_maglev for s in router.nat.services.all):
            rings.start(router.maglev, loop.call)
        admin = AdminServer(
            cfg.admin.socket,
            lambda: the_loop.call(
                lambda: snapshot(
                    the_loop.router,
                    the_loop,
                    sockets,
                    started,
                    config_path,
                    the_fastpath,
                    {
                        "bgp": lambda: the_announcer.snapshot() if the_announcer else None,
                        "gc": gcwatch.snapshot,
                    },
                )
            ),
            parse_listen(cfg.admin.metrics) if cfg.admin.metrics else None,
            # listing and deleting run in the loop a slice at a time (never a long pause)
            lambda action, query: the_loop.mailbox.start(
                conns.job(action, the_loop.router.nat, time.monotonic, query)
            ),
            # hopgate backend: a change made in the loop, logged before it is answered
            backends=backends.requests(current, the_loop.call, the_loop.log_events),
            reload=lambda: _reload(reloader, "hopgate reload").to_json(),
            actions=_bgp_actions(announcer),
        )
        admin.start()
        for iface in views.router(router.state())["interfaces"]:
            log.info(
                "%s: mac %s, mtu %d, addresses %s",
                iface["name"],
                iface["mac"],
                iface["mtu"],
                ", ".join(iface["addresses"]),
            )
        if router.nat is not None:
            for svc in router.nat.services.all:
                d = views.service(svc.describe())
                log.info(
                    "service %s: %s %s port %d, %s over %s, backends %s",
                    d["name"],
                    d["protocol"],
                    d["vip"],
                    d["port"],
                    d["scheduler"],
                    ", ".join(d["local_addresses"]),
                    ", ".join(f"{b['backend']} (weight {b['weight']})" for b in d["backends"]),
                )
        log.info(
            "hopgate %s routing on %s; admin socket %s",
            __version__,
            ", ".join(names),
            cfg.admin.socket,
        )
        if announcer is not None:
            # After the admin socket: `hopgate drain` works from the first moment.
            announcer.start()
        checkpoints.start()
        loop.run()
        if announcer is not None:
            # Withdrawn first: the routers send this node nothing new from now on.
            announcer.stop()
        drained = loop.drain()
        log.info("stopped (%d frames that had arrived forwarded on the way out)", drained)
        checkpoints.stop()
        nat = loop.router.nat
        if nat is not None:
            exact = fastpath.stop() if fastpath is not None else True
            _save(nat, state_path, exact)
    finally:
        gcwatch.stop()
        if announcer is not None:
            announcer.stop()
        if checkpoints is not None:
            checkpoints.stop()
        if admin is not None:
            admin.stop()
        rings.close()
        if fastpath is not None:
            fastpath.close()
        for s in sockets:
            s.close()
        for h in hosts.values():
            h.close()
        if loop is not None:
            loop.close()
        with contextlib.suppress(Exception):
            interfaces.release()
