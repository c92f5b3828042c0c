"""The ``hopgate`` command."""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from hopgate import __version__
from hopgate.control.conns import DEFAULT_LIMIT
from hopgate.control.specs import setting
from hopgate.pipeline.model import BackendSpec, RelaySettings, burst_for

if TYPE_CHECKING:
    from rich.console import Console

    from hopgate.lab.ecmplab import EcmpLab


def _console() -> Console:
    """Rich's console; when the output is not a terminal (a pipe, a file), wide
    enough that no address is cut short for grep and friends."""
    from rich.console import Console

    # emoji off: ":100:" in an IPv6 address is not a picture
    if sys.stdout.isatty():
        return Console(emoji=False)
    return Console(emoji=False, width=200)


def _fail(message: str) -> NoReturn:
    click.echo(f"hopgate: {message}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hopgate")
def main() -> None:
    """A user-space router for Linux that gets ICMP right."""


@main.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="TOML config file.",
)
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
    show_default=True,
)
def run(config_path: str, log_level: str) -> None:
    """Take the configured interfaces and route until SIGINT or SIGTERM."""
    from hopgate import daemon
    from hopgate.control.admin import AdminError
    from hopgate.control.config import ConfigError, load
    from hopgate.io.netprep import PrepareError
    from hopgate.xdp.dataplane import FastPathError

    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = load(config_path)
        daemon.run(cfg, config_path)
    except (ConfigError, PrepareError, AdminError, FastPathError) as e:
        _fail(str(e))
    except PermissionError as e:
        _fail(f"{e} (hopgate needs root, or CAP_NET_RAW and CAP_NET_ADMIN)")


def _ports(ctx: click.Context, param: click.Parameter, value: str | None) -> frozenset[int]:
    if not value:
        return frozenset()
    ports = set()
    for raw in value.split(","):
        part = raw.strip()
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise click.BadParameter(f"{part!r} is not a port (1-65535); give them as 80,443")
        ports.add(int(part))
    return frozenset(ports)


def _relay_range(name: str) -> click.FloatRange | click.IntRange:
    """An option's type: the values the ``RelaySettings`` field ``name`` may take."""
    return _spec_range(RelaySettings, name)


def _spec_range(spec: type, name: str) -> click.FloatRange | click.IntRange:
    """An option's type: the values the field ``name`` of ``spec`` may take."""
    s = setting(spec, name)
    b = s.bounds
    assert b is not None
    if s.type is float:
        low = b.gt if b.gt is not None else b.ge
        return click.FloatRange(min=low, max=b.le, min_open=b.gt is not None)
    assert b.gt is None
    return click.IntRange(None if b.ge is None else int(b.ge), None if b.le is None else int(b.le))


# The options' defaults and ranges are RelaySettings' (pipeline/model.py), as are [relay]'s.
@main.command()
@click.option(
    "-i",
    "--iface",
    "interfaces",
    multiple=True,
    required=True,
    metavar="IF",
    help="Interface to listen on and relay to (repeat for several).",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="ADDR",
    help="Relay by unicast to this peer's MAC (repeat); without --peer, broadcast.",
)
@click.option(
    "--src-rate",
    type=_relay_range("src_rate"),
    default=RelaySettings.src_rate,
    show_default=True,
    help="Messages a second relayed from one source address.",
)
@click.option(
    "--src-burst",
    type=_relay_range("src_burst"),
    help="Messages one source may send at once.  [default: the rate, at least 1]",
)
@click.option(
    "--iface-rate",
    type=_relay_range("iface_rate"),
    default=RelaySettings.iface_rate,
    show_default=True,
    help="Messages a second relayed from one interface.",
)
@click.option(
    "--iface-burst",
    type=_relay_range("iface_burst"),
    help="Messages one interface may relay at once.  [default: the rate, at least 1]",
)
@click.option(
    "--min-mtu",
    type=_relay_range("min_mtu"),
    help="Relay only messages whose MTU is at least this (stricter than 68 / 1280).",
)
@click.option("--max-mtu", type=_relay_range("max_mtu"), help="...and at most this.")
@click.option(
    "--ports",
    callback=_ports,
    metavar="P,P",
    help="Relay only errors about packets from these source ports (the services').",
)
@click.option(
    "--mark",
    type=_relay_range("mark"),
    default=RelaySettings.mark,
    show_default=True,
    help="DSCP that marks relayed copies, which are never relayed again.",
)
@click.option(
    "--dry-run", is_flag=True, help="Check and count, log what would be relayed, send nothing."
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Log every message and what became of it (with the eBPF filter, what it"
    " refuses is counted, not logged).",
)
@click.option(
    "-s",
    "--socket",
    "socket_path",
    default="/run/hopgate/relay.sock",
    show_default=True,
    help="Admin socket (hopgate status -s reads it).",
)
@click.option("--metrics", metavar="ADDR:PORT", help="Also serve /metrics over HTTP.")
@click.option(
    "--filter",
    "filter_mode",
    type=click.Choice(["auto", "ebpf", "classic"]),
    default="auto",
    show_default=True,
    help="Capture filter: eBPF (checks and limits in the kernel), classic (limits in"
    " the relay), or eBPF where it loads.",
)
def relay(
    interfaces: tuple[str, ...],
    peers: tuple[str, ...],
    src_rate: float,
    src_burst: float | None,
    iface_rate: float,
    iface_burst: float | None,
    min_mtu: int | None,
    max_mtu: int | None,
    ports: frozenset[int],
    mark: int,
    dry_run: bool,
    verbose: bool,
    socket_path: str,
    metrics: str | None,
    filter_mode: str,
) -> None:
    """Relay fragmentation needed and Packet Too Big to the other servers behind an
    ECMP router (for Linux servers sharing an address, as Cloudflare's pmtud)."""
    import ipaddress

    from hopgate import relayd
    from hopgate.control.admin import AdminError
    from hopgate.control.config import parse_listen

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if min_mtu is not None and max_mtu is not None and min_mtu > max_mtu:
        _fail(f"--min-mtu {min_mtu} is above --max-mtu {max_mtu}")
    try:
        peer_addrs = tuple(ipaddress.ip_address(p) for p in peers)
    except ValueError as e:
        _fail(f"--peer: {e}")
    listen = None
    if metrics:
        try:
            listen = parse_listen(metrics)
        except ValueError as e:
            _fail(f"--metrics: {e}")
    settings = RelaySettings(
        src_rate=src_rate,
        src_burst=burst_for(src_rate, src_burst),
        iface_rate=iface_rate,
        iface_burst=burst_for(iface_rate, iface_burst),
        min_mtu=min_mtu,
        max_mtu=max_mtu,
        ports=ports,
        mark=mark,
    )
    opts = relayd.RelayOptions(
        interfaces, settings, peer_addrs, dry_run, verbose, socket_path, listen, filter_mode
    )
    try:
        relayd.run(opts)
    except (relayd.RelayError, AdminError) as e:
        _fail(str(e))
    except PermissionError as e:
        _fail(f"{e} (the relay needs root, or CAP_NET_RAW)")


@main.command("check-config")
@click.argument("config_path", type=click.Path(dir_okay=False))
def check_config(config_path: str) -> None:
    """Validate a config file; list every problem with its key path."""
    from hopgate.control.config import ConfigError, load

    try:
        cfg = load(config_path)
    except ConfigError as e:
        _fail(str(e))
    parts = [_count(len(cfg.interface), "interface"), _count(len(cfg.route), "route")]
    if cfg.nat is not None:
        parts.append(f"NAT with {len(cfg.nat.snat)} snat and {len(cfg.nat.dnat)} dnat rules")
    if cfg.service:
        backends = sum(len(s.backend) for s in cfg.service)
        parts.append(f"{_count(len(cfg.service), 'service')} with {_count(backends, 'backend')}")
    if cfg.relay is not None:
        how = f"to {_count(len(cfg.relay.peers), 'peer')}" if cfg.relay.peers else "by broadcast"
        parts.append(f"PMTU relay on {', '.join(cfg.relay.interfaces)} {how}")
    click.echo(f"{config_path}: ok ({', '.join(parts)})")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _socket_for(socket_path: str | None, config_path: str | None) -> str:
    from hopgate.control.config import DEFAULT_ADMIN_SOCKET, ConfigError, load

    if socket_path:
        return socket_path
    if config_path:
        try:
            return load(config_path).admin.socket
        except ConfigError as e:
            _fail(str(e))
    return DEFAULT_ADMIN_SOCKET


F = TypeVar("F", bound=Callable[..., Any])


def _ask(request: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """A request to the daemon's admin socket; its refusal (the reason it gave)
    or its absence ends the command with the reason."""
    from hopgate.control.admin import AdminError, AdminRefusedError

    try:
        return request(*args)
    except AdminRefusedError as e:
        _fail(e.reason)
    except AdminError as e:
        _fail(str(e))


def _daemon_options(command: F) -> F:
    """``-s``/``--socket`` and ``-c``/``--config``: which daemon a command talks to."""
    command = click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        help="Find the socket in this config.",
    )(command)
    return click.option("-s", "--socket", "socket_path", help="Admin socket of the daemon.")(
        command
    )


@main.command()
@_daemon_options
@click.option("--json", "as_json", is_flag=True, help="Print the raw state as JSON.")
def status(socket_path: str | None, config_path: str | None, as_json: bool) -> None:
    """Show a running daemon's counters: traffic, drops by reason, ICMP sent (or a
    relay's: messages seen, relayed, not relayed by reason)."""
    from hopgate.control import status as status_view
    from hopgate.control.admin import AdminError, fetch_status

    path = _socket_for(socket_path, config_path)
    try:
        state = fetch_status(path)
    except AdminError as e:
        _fail(str(e))
    if as_json:
        click.echo(json.dumps(state, indent=2))
    elif state.get("kind") == "relay":
        status_view.render_relay(state, _console())
    else:
        status_view.render(state, _console())


@main.command()
@_daemon_options
@click.option("--family", type=click.Choice(["4", "6"]), help="IPv4 or IPv6 only.")
@click.option("--protocol", help="tcp, udp, icmp, icmpv6, or a number.")
@click.option(
    "--address", help="Connections with this address, on either side, before or after translation."
)
@click.option(
    "--port", help="Connections with this port, on either side, before or after translation."
)
@click.option("--state", help="TCP state, as shown (established, time-wait, ...).")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    help=f"Show at most this many; 0 shows all.  [default: {DEFAULT_LIMIT}]",
)
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON, one connection a line.")
@click.option(
    "-D",
    "--delete",
    is_flag=True,
    help="Delete the connections the filters select (at least one), as conntrack -D.",
)
@click.option("-F", "--flush", is_flag=True, help="Delete every connection, as conntrack -F.")
def conns(
    socket_path: str | None,
    config_path: str | None,
    family: str | None,
    protocol: str | None,
    address: str | None,
    port: str | None,
    state: str | None,
    limit: int | None,
    as_json: bool,
    delete: bool,
    flush: bool,
) -> None:
    """List the connections the NAT tracks and the load balancer's, with their
    backends; or delete them (their mappings released).  Neither stalls
    forwarding: the daemon does the work a slice at a time."""
    import os

    from hopgate.control import status as status_view
    from hopgate.control.admin import AdminError, delete_conns, fetch_conns, stream_conns

    path = _socket_for(socket_path, config_path)
    filters = {
        "family": family or "",
        "protocol": protocol or "",
        "address": address or "",
        "port": port or "",
        "state": state or "",
    }
    if delete or flush:
        if delete and flush:
            _fail("--delete or --flush, not both")
        if limit is not None:
            _fail("--limit is for listing; --delete removes every connection that matches")
        if flush and any(filters.values()):
            _fail("--flush deletes every connection: no filters (--delete takes them)")
        if delete and not any(filters.values()):
            _fail("--delete needs a filter (--flush deletes every connection)")
        try:
            deleted = delete_conns(path, None if flush else filters)
        except AdminError as e:
            _fail(str(e))
        if as_json:
            click.echo(json.dumps({"deleted": deleted}))
        else:
            click.echo(f"{deleted:,} {'connection' if deleted == 1 else 'connections'} deleted")
        return
    if limit is not None:
        filters["limit"] = str(limit)
    try:
        if as_json:
            # As the daemon writes it: nothing parsed, nothing held, whatever the size.
            out = sys.stdout.buffer
            try:
                for chunk in stream_conns(path, filters):
                    out.write(chunk)
                out.flush()
            except BrokenPipeError:  # | head: the reader has all it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        result = fetch_conns(path, filters)
    except AdminError as e:
        _fail(str(e))
    status_view.render_conns(result, _console())


@main.command()
@click.argument("service")
@click.argument("address")
@click.argument("action", type=click.Choice(["drain", "disable", "enable", "weight"]))
@click.argument("weight", required=False, type=_spec_range(BackendSpec, "weight"))
@_daemon_options
@click.option("--json", "as_json", is_flag=True, help="Print what changed as JSON.")
def backend(
    service: str,
    address: str,
    action: str,
    weight: int | None,
    socket_path: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Change a load-balanced backend at run time, as ipvsadm -e and HAProxy's
    runtime API.  ADDRESS is the backend's address, or address:port when the
    service has several backends on it; the backend is changed in every service
    named SERVICE (an IPv4 and an IPv6 service may share a name).

    \b
    drain     no new connections; the open ones go on until they end
    disable   no new connections; the open ones are closed if the service has
              on_backend_down = "close", kept otherwise
    enable    back to what its health checks say
    weight N  its weight for new connections from now on (0: none)

    Health and admin state are apart: a drained backend whose checks pass stays
    drained.  The change lasts until hopgate stops or the backend leaves the
    config: a reload of the file does not undo it."""
    from hopgate.control.admin import change_backend

    if action == "weight" and weight is None:
        _fail("weight needs a number: hopgate backend SERVICE ADDRESS weight N")
    if action != "weight" and weight is not None:
        _fail(f"{action} takes no number (only weight does)")
    query = {"service": service, "address": address, "action": action}
    if weight is not None:
        query["weight"] = str(weight)
    result = _ask(change_backend, _socket_for(socket_path, config_path), query)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for b in result["changed"]:
        click.echo(b["message"])


@main.command()
@_daemon_options
@click.option("--json", "as_json", is_flag=True, help="Print what the reload did as JSON.")
def reload(socket_path: str | None, config_path: str | None, as_json: bool) -> None:
    """Have the running daemon read its config file again and apply what changed,
    keeping the connections whose rule, service and backend are still there
    (SIGHUP does the same).  If the file cannot be applied, nothing changes and
    every problem is printed with its key path.

    \b
    Only a restart changes the interfaces (their names and order), [admin],
    [dataplane] and [state].  What the operator set with hopgate backend stays
    (it wins over the file's weight) for every backend the file still has."""
    from hopgate.control.admin import reload as ask_reload

    result = _ask(ask_reload, _socket_for(socket_path, config_path))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from hopgate.control.reload import Outcome

    conns = result["connections"]
    outcome = Outcome(result["changes"], conns["kept"], Counter(conns["ended"]))
    for line in outcome.lines():
        click.echo(line)
    click.echo(f"forwarding held for {result['stall_ms']:.3f} ms")


@main.command()
@_daemon_options
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True, max=86400),
    help="End the connections still there after this many seconds (default: never).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the BGP state after as JSON.")
def drain(
    socket_path: str | None, config_path: str | None, timeout: float | None, as_json: bool
) -> None:
    """Withdraw every prefix this node announces over BGP ([bgp]): the routers
    send it no new connection, and it keeps forwarding the ones it has until
    they end (or --timeout).  It stays drained across reloads and restarts,
    until hopgate undrain."""
    from hopgate.control.admin import drain as ask_drain

    result = _ask(ask_drain, _socket_for(socket_path, config_path), timeout)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    end = f"; connections left are ended after {timeout:g} s" if timeout else ""
    click.echo(f"drained: every prefix withdrawn{end}")


@main.command()
@_daemon_options
@click.option("--json", "as_json", is_flag=True, help="Print the BGP state after as JSON.")
def undrain(socket_path: str | None, config_path: str | None, as_json: bool) -> None:
    """Announce this node's healthy VIPs over BGP again, after hopgate drain."""
    from hopgate.control.admin import undrain as ask_undrain

    result = _ask(ask_undrain, _socket_for(socket_path, config_path))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo("undrained: healthy VIPs are announced again")


def _need_root() -> None:
    import os

    if os.geteuid() != 0:
        _fail("the lab creates network namespaces: run as root")


@main.command()
@click.option(
    "--kernel", is_flag=True, help="Run the same demo with a Linux router in hopgate's place."
)
@click.option("--keep", is_flag=True, help="Leave the lab running afterwards.")
def demo(kernel: bool, keep: bool) -> None:
    """Build a lab, run ping, traceroute, tracepath and curl through hopgate, show the results."""
    from hopgate.lab.demo import run_demo

    _need_root()
    ok = run_demo(_console(), kernel=kernel, keep=keep)
    sys.exit(0 if ok else 1)


@main.group()
def lab() -> None:
    """Keep a lab running for exploration."""


@lab.command("up")
@click.option("--name", help="Lab name (default: a random hgXXXXXX).")
@click.option(
    "--topology",
    type=click.Choice(["router", "nat", "lb", "ecmp", "ecmp-lb", "bgp"]),
    default="router",
    show_default=True,
    help="router: client — gw — r1 — server.  nat: two inside hosts — gw (NAT) — r1 — server."
    "  lb: a client behind uplink routers A and B — gw (load balancer) — three backends."
    "  ecmp: client — r1 (MTU 1400) — ECMP router — three servers with hopgate relay."
    "  ecmp-lb: the same with three hopgate load balancers sharing a VIP."
    "  bgp: ecmp-lb with the router learning the VIP from the nodes over BGP (BIRD).",
)
@click.option("--kernel", is_flag=True, help="Linux (with nftables for nat) as gw, not hopgate.")
@click.option(
    "--dataplane",
    type=click.Choice(["afpacket", "xdp"]),
    default="afpacket",
    show_default=True,
    help="hopgate's [dataplane] mode: the Python pipeline alone, or behind the XDP fast path"
    " (the lab gives the peers of hopgate's interfaces the XDP program a veth needs to take"
    " redirected frames).  Not for ecmp, whose nodes are servers.",
)
def lab_up(name: str | None, topology: str, kernel: bool, dataplane: str) -> None:
    """Build a lab and leave it running."""
    from hopgate.lab.bgplab import BgpLab
    from hopgate.lab.ecmplab import ECMP_ADDR, EcmpLab
    from hopgate.lab.lblab import LB_ADDR, LbLab
    from hopgate.lab.netns import LabError
    from hopgate.lab.topologies import ADDR, NAT_ADDR, NatLab, RouterLab

    _need_root()
    if topology not in ("router", "nat") and kernel:
        _fail(f"the {topology} topology has no kernel version (--kernel is for router and nat)")
    if dataplane != "afpacket" and (kernel or topology == "ecmp"):
        _fail("--dataplane is hopgate's: not with --kernel, nor for ecmp (its nodes are servers)")
    mode = "kernel" if kernel else "hopgate"
    try:
        built: RouterLab | NatLab | LbLab | EcmpLab
        if topology == "router":
            built = RouterLab(mode, name, dataplane=dataplane)
        elif topology == "nat":
            built = NatLab(mode, name, dataplane=dataplane)
        elif topology == "lb":
            built = LbLab(name, dataplane=dataplane)
        elif topology == "bgp":
            built = BgpLab(name, dataplane=dataplane)
        elif topology == "ecmp":
            built = EcmpLab("servers", name)
            built.start_relays()
        else:
            built = EcmpLab("hopgate", name, dataplane=dataplane)
    except LabError as e:
        _fail(str(e))
    if isinstance(built, EcmpLab):
        _ecmp_lab_up(built, ECMP_ADDR.shared4)
        return
    # Leave it running: the lab's processes are in their own sessions and survive us.
    shown = mode if kernel else f"{mode} ({dataplane})"
    click.echo(f"lab {built.name} is up: {topology}, {shown} as gw")
    for ns in built.lab.namespaces.values():
        click.echo(f"  {ns.role:8} ip netns exec {ns.name} ...")
    if topology == "router":
        click.echo(f"  try:    ip netns exec {built.name}-client traceroute -n {ADDR.server4}")
    elif topology == "nat":
        click.echo(f"  try:    ip netns exec {built.name}-inside1 traceroute -n {NAT_ADDR.server4}")
        click.echo(
            f"          ip netns exec {built.name}-server curl http://{NAT_ADDR.gw_u4}:"
            f"{NAT_ADDR.published_port}/"
        )
    else:
        client = f"ip netns exec {built.name}-client"
        click.echo(f"  try:    {client} traceroute -n -T -p 80 {LB_ADDR.vip4}")
        click.echo(f"          {client} curl http://{LB_ADDR.vip4}/")
        click.echo(f"          {client} curl 'http://[{LB_ADDR.vip6}]/'")
    if not kernel:
        click.echo(f"  status: hopgate status -s {built.admin_socket}")
        if topology != "router":
            click.echo(f"  conns:  hopgate conns -s {built.admin_socket}")
        if topology == "lb":
            click.echo(
                f"  drain:  hopgate backend -s {built.admin_socket} web"
                f" {LB_ADDR.backends4[0]} drain   (then enable)"
            )
        click.echo(f"  config: {built.config_path}")
    click.echo(f"  remove: hopgate lab down {built.name}")


def _ecmp_lab_up(built: EcmpLab, shared: str) -> None:
    from hopgate.lab.bgplab import BgpLab
    from hopgate.lab.ecmplab import FILE, NODES

    what = "servers with hopgate relay" if built.kind == "servers" else "hopgate nodes, [relay]"
    if isinstance(built, BgpLab):
        what = "hopgate nodes announcing the VIP over BGP, [relay]"
    if built.kind == "hopgate":
        what += f" ({built.dataplane})"
    click.echo(f"lab {built.name} is up: {what}")
    for ns in built.lab.namespaces.values():
        click.echo(f"  {ns.role:8} ip netns exec {ns.name} ...")
    client = f"ip netns exec {built.name}-client"
    click.echo(f"  try:    {client} curl -o /dev/null http://{shared}/{FILE}")
    for node in NODES:
        click.echo(f"  {node}:     hopgate status -s {built.socket_of(node)}")
    if isinstance(built, BgpLab):
        ecmp = f"ip netns exec {built.name}-ecmp"
        click.echo(f"  router: {ecmp} ip route show {shared}")
        click.echo(f"          {ecmp} birdc -s {built.lab.dir / 'router-bird.ctl'} show protocols")
        click.echo(f"  drain:  hopgate drain -s {built.socket_of(NODES[0])}   (then undrain)")
    click.echo(f"  remove: hopgate lab down {built.name}")


@lab.command("down")
@click.argument("names", nargs=-1, required=True)
def lab_down(names: tuple[str, ...]) -> None:
    """Stop a lab's processes and delete its namespaces."""
    from hopgate.lab.netns import destroy

    _need_root()
    unknown = [n for n in names if not destroy(n)]
    for n in names:
        if n not in unknown:
            click.echo(f"lab {n} removed")
    if unknown:
        _fail(f"no lab named {', '.join(unknown)} (see hopgate lab list)")


@lab.command("list")
def lab_list() -> None:
    """The labs on this machine."""
    from hopgate.lab.netns import list_labs

    labs = list_labs()
    if not labs:
        click.echo("no labs")
    for rec in labs:
        info = rec.get("info", {})
        running = ", ".join(p["name"] for p in rec["processes_running"]) or "none"
        click.echo(
            f"{rec['name']}: {info.get('topology', '?')} ({info.get('mode', '?')}), "
            f"{len(rec['namespaces_present'])}/{len(rec['namespaces'])} namespaces,"
            f" processes: {running}"
        )


if __name__ == "__main__":
    main()
