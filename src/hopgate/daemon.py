"""``hopgate run``: take the configured interfaces and route until told to stop."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict
from typing import Any

from hopgate import __version__
from hopgate.control import conns, views
from hopgate.control.admin import AdminServer
from hopgate.control.config import Config, parse_listen
from hopgate.control.lbcontrol import RingWorker
from hopgate.io import ctlpath
from hopgate.io.afpacket import PacketSocket
from hopgate.io.links import LinkMonitor, LinkWatch
from hopgate.io.loop import Loop
from hopgate.io.netprep import Interfaces
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
) -> dict[str, Any]:
    """The daemon's whole visible state, as plain data (runs in the loop thread)."""
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
    out.update(counters)
    return out


def run(cfg: Config, config_path: str) -> None:
    names = [i.name for i in cfg.interface]
    interfaces = Interfaces(names, {i.name: i.mtu for i in cfg.interface})
    links = interfaces.inspect()
    spec = cfg.router_spec({n: (link.mac, link.mtu) for n, link in links.items()})
    started = time.monotonic()
    # Maglev tables are computed by the control plane, not in the loop.
    rings = RingWorker()
    router = Router(spec, now=started, on_ring=rings.wake)
    sockets: list[PacketSocket] = []
    admin: AdminServer | None = None
    loop: Loop | None = None
    fastpath: FastPath | None = None
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
        fastpath = dataplane.start(
            cfg.dataplane.mode,
            cfg.dataplane.xdp_attach,
            router,
            {p.index: links[p.name].index for p in router.ports},
            veths=[n for n, link in links.items() if link.kind == "veth"],
        )
        watch = LinkWatch({p.name: (p.index, links[p.name].index) for p in router.ports})
        loop = Loop(
            router,
            sockets,
            links=LinkMonitor(watch),
            prepare=interfaces.retake,
            fastpath=fastpath,
        )
        loop.install_signal_handlers()
        the_loop, the_fastpath = loop, fastpath
        if router.nat is not None and any(s.uses_maglev for s in router.nat.services.all):
            rings.start(router.maglev, loop.call)
        admin = AdminServer(
            cfg.admin.socket,
            lambda: the_loop.call(
                lambda: snapshot(router, the_loop, sockets, started, config_path, the_fastpath)
            ),
            parse_listen(cfg.admin.metrics) if cfg.admin.metrics else None,
            # listing and deleting run in the loop a slice at a time (never a long pause)
            lambda action, query: the_loop.mailbox.start(
                conns.job(action, router.nat, time.monotonic, query)
            ),
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
        loop.run()
        log.info("stopped")
    finally:
        if admin is not None:
            admin.stop()
        rings.close()
        if fastpath is not None:
            fastpath.close()
        for s in sockets:
            s.close()
        if loop is not None:
            loop.close()
        with contextlib.suppress(Exception):
            interfaces.release()
