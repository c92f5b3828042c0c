"""The TOML configuration: its schema, its checks, and every error with its key path.

Structure and types are checked by pydantic (unknown keys are errors); the
relations between sections (a next hop on a connected subnet, no subnet on two
interfaces, IPv6 needing an MTU of 1280, no address in two roles that exclude
each other) by ``_check_relations``.  Both report
``ConfigIssue(path, message)``, so ``hopgate check-config`` can list them all.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    create_model,
    field_validator,
)

from hopgate.control.bgp import BgpSpec, Neighbour
from hopgate.control.specs import Setting, setting, settings
from hopgate.packet.proto import PROTO_TCP, PROTO_UDP
from hopgate.pipeline.lb import maglev
from hopgate.pipeline.model import (
    BackendDown,
    BackendSpec,
    DnatSpec,
    EchoPolicy,
    HealthKind,
    HealthSpec,
    IcmpRateSettings,
    IPAddress,
    IPInterface,
    NatSpec,
    NeighbourSettings,
    NextHopSpec,
    PortSpec,
    ReassemblySettings,
    RelaySettings,
    RelaySpec,
    RouterSpec,
    RouteSpec,
    Scheduler,
    ServiceSpec,
    SnatSpec,
    Timeouts,
    burst_for,
)

DEFAULT_ADMIN_SOCKET = "/run/hopgate/hopgate.sock"
HOST_NAME_PREFIX = "h-"  # of a host port's default name: "h-" and the interface's
_IFNAME = re.compile(r"^[^/\s:%]{1,15}$")


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        noun = "error" if len(issues) == 1 else "errors"
        lines = [f"{source}: {len(issues)} {noun}"] + [f"  {i}" for i in issues]
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Section(_Strict):
    """A section whose keys are a pipeline spec's settings, one per field (see
    ``_from_spec``)."""

    spec: ClassVar[type[Any]]

    def to_spec(self, **given: Any) -> Any:
        """The spec this section describes; ``given``: its fields that are not keys."""
        values = {s.field: s.from_key(getattr(self, s.key)) for s in _keys(self.spec)}
        return self.spec(**values, **given)


_S = TypeVar("_S", bound=_Section)
_T = TypeVar("_T")


def _keys(spec: type[Any]) -> list[Setting]:
    return [s for s in settings(spec) if not s.internal]


def _from_spec(spec: type[Any]) -> Callable[[type[_S]], type[_S]]:
    """Give a section one key per setting of ``spec``, a pipeline spec dataclass:
    named, typed, bounded and defaulted as its field says (``control/specs.py``).
    Adding a field to the spec adds the key; nothing here changes."""

    def build(cls: type[_S]) -> type[_S]:
        keys: dict[str, Any] = {}
        for s in _keys(spec):
            kind = int if s.scale != 1 else s.type  # scaled keys take integers
            keys[s.key] = (Annotated[kind, Field(**s.key_bounds())], s.to_key(s.default))
        model = create_model(
            cls.__name__, __base__=cls, __module__=cls.__module__, __doc__=cls.__doc__, **keys
        )
        model.spec = spec
        return model

    return build


def _spec(kind: type[_T], section: _Section, **given: Any) -> _T:
    assert section.spec is kind
    return cast(_T, section.to_spec(**given))


def _default(spec: type[Any], name: str) -> Any:
    """A spec field's default in its key's unit, for a hand-written key."""
    s = setting(spec, name)
    return s.to_key(s.default)


# The StrEnums of the pipeline's policies; strict validation would take only their
# members, and the TOML file gives their values.
_Policy = Strict(False)


def _valid_interface_address(text: str) -> str:
    _parse_interface_address(text)
    return text


def _valid_next_hop(text: str) -> str:
    _parse_next_hop(text)
    return text


InterfaceAddress = Annotated[str, AfterValidator(_valid_interface_address)]
NextHop = Annotated[str, AfterValidator(_valid_next_hop)]


class InterfaceConfig(_Strict):
    name: str
    addresses: list[InterfaceAddress] = Field(default_factory=list)
    # The IP MTU hopgate uses on this link; defaults to the link's own MTU.
    mtu: Annotated[int, Field(ge=68, le=65535)] | None = None
    # The host port (io/hostport.py): addresses of the host's kernel on this
    # link (a routing daemon, SSH), on a kernel interface hopgate creates and
    # passes their frames to; ``host_name`` names it (default: HOST_NAME_PREFIX
    # and the interface's name, cut to 15 characters).
    host_addresses: list[InterfaceAddress] = Field(default_factory=list)
    host_name: str | None = None

    @field_validator("name", "host_name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _IFNAME.match(v):
            raise ValueError("not a Linux interface name (1 to 15 characters, no '/', ':', '%')")
        return v

    def interfaces(self) -> list[IPInterface]:
        return [_parse_interface_address(t) for t in self.addresses]

    def host_interfaces(self) -> list[IPInterface]:
        return [_parse_interface_address(t) for t in self.host_addresses]

    def host_port(self) -> str | None:
        """The name of the host port's interface; None without host addresses."""
        if not self.host_addresses:
            return None
        return self.host_name or (HOST_NAME_PREFIX + self.name)[:15]


class RouteConfig(_Strict):
    prefix: str
    via: Annotated[list[NextHop], Field(min_length=1)]

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        try:
            ipaddress.ip_network(v, strict=True)
        except ValueError:
            raise ValueError(_explain_network(v)) from None
        return v


@_from_spec(IcmpRateSettings)
class IcmpConfig(_Section):
    """Named after Linux's sysctls; the defaults are Linux's.  0 turns a limit off."""


@_from_spec(NeighbourSettings)
class NeighbourConfig(_Section):
    """ARP/ND timing, named after net.ipv4.neigh.default.*; the defaults are Linux's."""


class AdminConfig(_Strict):
    socket: str = DEFAULT_ADMIN_SOCKET
    # "address:port" for an HTTP listener serving /metrics only (state, connections
    # and deletes stay on the root-only socket); off when absent.
    metrics: str | None = None

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: str | None) -> str | None:
        if v is not None:
            parse_listen(v)
        return v


def _valid_network(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise ValueError(_explain_network(text)) from None
    return text


def _valid_address(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    return text


def _valid_endpoint(text: str) -> str:
    parse_endpoint(text)
    return text


Network = Annotated[str, AfterValidator(_valid_network)]
Address = Annotated[str, AfterValidator(_valid_address)]
Endpoint = Annotated[str, AfterValidator(_valid_endpoint)]


class SnatConfig(_Strict):
    inside: Annotated[list[Network], Field(min_length=1)]
    interface: str
    # Outside addresses to use; the interface's own when absent (masquerade).
    pool: list[Address] = Field(default_factory=list)


class DnatConfig(_Strict):
    protocol: Literal["tcp", "udp", "all"]
    published: Endpoint  # "198.18.2.1:8080", "[2001:2::1]:8080", or an address alone
    inside: Endpoint


@_from_spec(Timeouts)
class TimeoutsConfig(_Section):
    """Seconds; named after net.netfilter.nf_conntrack_*_timeout.  The defaults
    are the pipeline's (model.Timeouts): Linux's."""


class NatConfig(_Strict):
    max_connections: Annotated[int, Field(ge=1)] = NatSpec.max_connections
    # 0: no limit
    max_connections_per_source: Annotated[int, Field(ge=0)] = NatSpec.max_connections_per_source
    tcp_be_liberal: bool = NatSpec.tcp_be_liberal
    snat: list[SnatConfig] = Field(default_factory=list)
    dnat: list[DnatConfig] = Field(default_factory=list)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    # Let new flows in from a translating interface to the inside prefixes.
    forward_unsolicited: bool = NatSpec.forward_unsolicited


class BackendConfig(_Strict):
    address: Address
    port: Annotated[int, Field(ge=1, le=65535)] | None = None  # default: the service's port
    weight: Annotated[int, Field(ge=0, le=1000)] = BackendSpec.weight  # 0: no new connections


class HealthConfig(_Strict):
    kind: Annotated[HealthKind, _Policy] | None = None  # default: tcp, or icmp for UDP
    interval_ms: Annotated[int, Field(ge=100)] = _default(HealthSpec, "interval")
    timeout_ms: Annotated[int, Field(ge=50)] = _default(HealthSpec, "timeout")
    rise: Annotated[int, Field(ge=1, le=100)] = HealthSpec.rise
    fall: Annotated[int, Field(ge=1, le=100)] = HealthSpec.fall
    http_path: str = HealthSpec.http_path
    http_status: Annotated[
        list[Annotated[int, Field(ge=100, le=599)]], Field(min_length=2, max_length=2)
    ] = list(HealthSpec.http_status)


class ServiceConfig(_Strict):
    name: str | None = None
    vip: Address
    port: Annotated[int, Field(ge=1, le=65535)]
    protocol: Literal["tcp", "udp"]
    scheduler: Annotated[Scheduler, _Policy] = ServiceSpec.scheduler
    local_addresses: Annotated[list[Address], Field(min_length=1)]
    echo: Annotated[EchoPolicy, _Policy] = ServiceSpec.echo
    on_backend_down: Annotated[BackendDown, _Policy] = ServiceSpec.on_backend_down
    maglev_table_size: Annotated[int, Field(ge=7)] = ServiceSpec.maglev_table_size
    backend: Annotated[list[BackendConfig], Field(min_length=1)]
    health: HealthConfig = Field(default_factory=HealthConfig)


class RelayConfig(_Strict):
    """PMTU errors about flows another node holds, relayed to the peers (the
    same settings as ``hopgate relay``); with peers, TCP segments of
    connections another node holds too (second chance, pipeline/lb/cluster.py)."""

    interfaces: Annotated[list[str], Field(min_length=1)]  # where errors arrive, copies go
    peers: list[Address] = Field(default_factory=list)  # unicast to these; none: broadcast
    src_rate: Annotated[float, Field(gt=0)] = RelaySettings.src_rate  # a second, one source
    src_burst: Annotated[float, Field(ge=1)] | None = None  # default: the rate
    iface_rate: Annotated[float, Field(gt=0)] = RelaySettings.iface_rate  # per interface
    iface_burst: Annotated[float, Field(ge=1)] | None = None
    min_mtu: Annotated[int, Field(ge=68, le=65535)] | None = None
    max_mtu: Annotated[int, Field(ge=68, le=65535)] | None = None
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(default_factory=list)
    mark: Annotated[int, Field(ge=0, le=63)] = RelaySettings.mark
    # TCP segments of connections another node holds, sent to the peers (second
    # chance); default (None): on when there are peers.
    second_chance: bool | None = RelaySpec.second_chance

    def settings(self) -> RelaySettings:
        return RelaySettings(
            src_rate=self.src_rate,
            src_burst=burst_for(self.src_rate, self.src_burst),
            iface_rate=self.iface_rate,
            iface_burst=burst_for(self.iface_rate, self.iface_burst),
            min_mtu=self.min_mtu,
            max_mtu=self.max_mtu,
            ports=frozenset(self.ports),
            mark=self.mark,
        )


class DataplaneConfig(_Strict):
    """Where frames are forwarded.  ``afpacket``: the Python pipeline takes every
    frame from its packet sockets.  ``xdp``: an XDP program forwards what it can
    prove the pipeline would forward unchanged, and passes everything else up to
    it (docs/fastpath.md); hopgate will not start if the program cannot load or
    attach.  ``auto``: XDP if it can, otherwise AF_PACKET with the reason logged."""

    mode: Literal["auto", "xdp", "afpacket"] = "afpacket"
    # "native": in the driver (fastest; on a veth, the peer must have an XDP
    # program or GRO on to take redirected frames); "generic": on the path every
    # device has, after the kernel has built its packet buffer.
    xdp_attach: Literal["native", "generic"] = "native"
    # Seconds the XDP program goes on forwarding the established connections
    # once hopgate has stopped (however it stopped), for the next hopgate to
    # take them over where they are; 0: the program is detached when hopgate
    # stops.
    handover: Annotated[float, Field(ge=0, le=3600)] = 10.0


class StateConfig(_Strict):
    """``[state]``: NAT's and the load balancer's connections kept across a
    restart (docs/operations.md).  ``file``: where (by default beside the admin
    socket, ``.state`` for ``.sock``); written when hopgate stops, every
    ``checkpoint_interval`` seconds (0: only when it stops, and on SIGUSR1) so
    that connections survive a crash too, and read back when it starts."""

    file: str | None = None
    checkpoint_interval: Annotated[float, Field(ge=0)] = 10.0


ASN = Annotated[int, Field(ge=1, le=4294967295)]


class BgpNeighborConfig(_Strict):
    address: Address  # on the subnet of one of an interface's host_addresses
    asn: ASN


class BgpConfig(_Strict):
    """The VIPs announced by BIRD (control/bgp.py, docs/bgp.md)."""

    asn: ASN  # this node's AS; the nodes of one cluster may share it
    router_id: Address | None = None  # an IPv4 address; default: the first IPv4 host address
    neighbor: Annotated[list[BgpNeighborConfig], Field(min_length=1)]
    hold_time: Annotated[int, Field(ge=3, le=65535)] = 9  # seconds
    keepalive_time: Annotated[int, Field(ge=1, le=65535)] | None = None  # default: hold_time / 3
    # Seconds between attempts to open a session, and the least wait after one fails.
    connect_retry: Annotated[int, Field(ge=1, le=65535)] = 5
    bfd: bool = False  # failure detection in a fraction of a second, if the neighbour runs BFD
    bfd_interval_ms: Annotated[int, Field(ge=10, le=60000)] = 100
    bfd_multiplier: Annotated[int, Field(ge=1, le=255)] = 3
    # A VIP is announced while one of its services has this many backends up.
    min_backends_up: Annotated[int, Field(ge=1)] = 1
    announce: list[Network] = Field(default_factory=list)  # announced too, unless drained
    bird: str = "bird"  # BIRD 2's binary: a name on PATH or a path


class Config(_Strict):
    interface: Annotated[list[InterfaceConfig], Field(min_length=1)]
    route: list[RouteConfig] = Field(default_factory=list)
    icmp: IcmpConfig = Field(default_factory=IcmpConfig)
    neighbour: NeighbourConfig = Field(default_factory=NeighbourConfig)
    nat: NatConfig | None = None
    service: list[ServiceConfig] = Field(default_factory=list)
    relay: RelayConfig | None = None
    admin: AdminConfig = Field(default_factory=AdminConfig)
    dataplane: DataplaneConfig = Field(default_factory=DataplaneConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    bgp: BgpConfig | None = None

    def bgp_spec(self) -> BgpSpec | None:
        """What BIRD runs (None without ``[bgp]``); the file is valid (checked)."""
        b = self.bgp
        if b is None:
            return None
        neighbours = []
        for n in b.neighbor:
            found = _bgp_session(self, ipaddress.ip_address(n.address))
            assert found is not None, "checked by _check_bgp"
            iface, local, next_hop = found
            neighbours.append(
                Neighbour(ipaddress.ip_address(n.address), n.asn, local, next_hop, iface)
            )
        return BgpSpec(
            asn=b.asn,
            router_id=b.router_id or str(_first_host_v4(self)),
            neighbours=tuple(neighbours),
            hold_time=b.hold_time,
            keepalive_time=b.keepalive_time or max(1, b.hold_time // 3),
            connect_retry=b.connect_retry,
            bfd=b.bfd,
            bfd_interval_ms=b.bfd_interval_ms,
            bfd_multiplier=b.bfd_multiplier,
            min_backends_up=b.min_backends_up,
            announce=tuple(ipaddress.ip_network(p) for p in b.announce),
            bird=b.bird,
        )

    def router_spec(self, links: dict[str, tuple[bytes, int]]) -> RouterSpec:
        """The pipeline's spec, given each interface's (MAC, link MTU) from the kernel."""
        ports = []
        for iface in self.interface:
            mac, link_mtu = links[iface.name]
            ports.append(
                PortSpec(
                    name=iface.name,
                    mac=mac,
                    mtu=iface.mtu or link_mtu,
                    addresses=tuple(iface.interfaces()),
                    link_mtu=link_mtu,
                    host_addresses=tuple(iface.host_interfaces()),
                )
            )
        routes = tuple(
            RouteSpec(
                ipaddress.ip_network(r.prefix),
                tuple(_parse_next_hop(v) for v in r.via),
            )
            for r in self.route
        )
        return RouterSpec(
            ports=tuple(ports),
            routes=routes,
            icmp=_spec(IcmpRateSettings, self.icmp),
            neighbour=_spec(NeighbourSettings, self.neighbour),
            reassembly=ReassemblySettings(),
            nat=self._nat_spec(),
            services=tuple(_service_spec(i, svc) for i, svc in enumerate(self.service)),
            relay=self._relay_spec(),
        )

    def _relay_spec(self) -> RelaySpec | None:
        r = self.relay
        if r is None:
            return None
        return RelaySpec(
            tuple(r.interfaces),
            tuple(ipaddress.ip_address(p) for p in r.peers),
            r.settings(),
            r.second_chance,
        )

    def _nat_spec(self) -> NatSpec | None:
        n = self.nat
        if n is None:
            return None
        dnat = []
        for d in n.dnat:
            pub, pub_port = parse_endpoint(d.published)
            ins, ins_port = parse_endpoint(d.inside)
            dnat.append(DnatSpec(d.protocol, pub, ins, pub_port, ins_port))
        return NatSpec(
            snat=tuple(
                SnatSpec(
                    tuple(ipaddress.ip_network(x) for x in sn.inside),
                    sn.interface,
                    tuple(ipaddress.ip_address(x) for x in sn.pool),
                )
                for sn in n.snat
            ),
            dnat=tuple(dnat),
            max_connections=n.max_connections,
            max_connections_per_source=n.max_connections_per_source,
            tcp_be_liberal=n.tcp_be_liberal,
            timeouts=_spec(Timeouts, n.timeouts),
            forward_unsolicited=n.forward_unsolicited,
        )


# -- parsing helpers -------------------------------------------------------------


def _parse_interface_address(text: str) -> IPInterface:
    if "/" not in text:
        raise ValueError(f"{text!r} needs a prefix length, as in 198.18.1.1/24")
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an address with a prefix length") from None
    ip = iface.ip
    if ip.is_multicast or ip.is_loopback or ip.is_unspecified:
        raise ValueError(f"{text!r} cannot be an interface address")
    if iface.version == 6 and ip.is_link_local:
        raise ValueError(f"{text!r}: link-local addresses are derived from the interface's MAC")
    net = iface.network
    if iface.version == 4 and net.prefixlen <= 30:
        if ip == net.network_address:
            raise ValueError(f"{text!r} is the network address of {net}")
        if ip == net.broadcast_address:
            raise ValueError(f"{text!r} is the broadcast address of {net}")
    return iface


def _parse_next_hop(text: str) -> NextHopSpec:
    addr_text, _, ifname = text.partition("%")
    try:
        address = ipaddress.ip_address(addr_text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if address.is_multicast or address.is_unspecified or address.is_loopback:
        raise ValueError(f"{text!r} cannot be a next hop")
    if address.version == 6 and address.is_link_local and not ifname:
        raise ValueError(f"{text!r} is link-local: name its interface, as in {text}%gw-u")
    return NextHopSpec(address, ifname or None)


def _explain_network(text: str) -> str:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"{text!r} is not a prefix such as 198.18.0.0/15 or 2001:2::/48"
    return f"{text!r} has host bits set; did you mean {net}?"


def _service_spec(index: int, svc: ServiceConfig) -> ServiceSpec:
    vip = ipaddress.ip_address(svc.vip)
    proto = PROTO_TCP if svc.protocol == "tcp" else PROTO_UDP
    h = svc.health
    kind = h.kind or (HealthKind.TCP if proto == PROTO_TCP else HealthKind.ICMP)
    return ServiceSpec(
        name=svc.name or f"{svc.protocol}/{_endpoint_text(vip, svc.port)}",
        family=vip.version,
        protocol=proto,
        vip=int(vip),
        port=svc.port,
        backends=tuple(
            BackendSpec(int(ipaddress.ip_address(b.address)), b.port or svc.port, b.weight)
            for b in svc.backend
        ),
        local_addresses=tuple(int(ipaddress.ip_address(a)) for a in svc.local_addresses),
        scheduler=svc.scheduler,
        echo=svc.echo,
        on_backend_down=svc.on_backend_down,
        maglev_table_size=svc.maglev_table_size,
        health=HealthSpec(
            kind=kind,
            interval=setting(HealthSpec, "interval").from_key(h.interval_ms),
            timeout=setting(HealthSpec, "timeout").from_key(h.timeout_ms),
            rise=h.rise,
            fall=h.fall,
            http_path=h.http_path,
            http_status=(h.http_status[0], h.http_status[1]),
        ),
    )


def _endpoint_text(a: IPAddress, port: int) -> str:
    return f"[{a}]:{port}" if a.version == 6 else f"{a}:{port}"


def parse_endpoint(text: str) -> tuple[IPAddress, int | None]:
    """ "198.18.2.1:8080", "[2001:2::1]:8080", or an address alone."""
    port: int | None = None
    host = text
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not [address]:port")
        if rest:
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(text, port_text)
    try:
        return ipaddress.ip_address(host), port
    except ValueError:
        raise ValueError(
            f"{text!r} is not an address, address:port or [IPv6 address]:port"
        ) from None


def _port(text: str, port: str) -> int:
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be 1 to 65535")
    return int(port)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not address:port, as in 127.0.0.1:9469")
    host = host.strip("[]") or "0.0.0.0"
    ipaddress.ip_address(host)
    return host, int(port)


# -- relations between sections ----------------------------------------------------


def _check_relations(cfg: Config) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    names: dict[str, int] = {}
    subnets: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str] = {}
    owners: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}
    for i, iface in enumerate(cfg.interface):
        if iface.name in names:
            issues.append(
                ConfigIssue(
                    f"interface[{i}].name",
                    f"{iface.name!r} is already interface[{names[iface.name]}]",
                )
            )
        names.setdefault(iface.name, i)
        addrs = iface.interfaces()
        for j, a in enumerate(addrs):
            where = f"interface[{i}].addresses[{j}]"
            if a.ip in owners:
                issues.append(ConfigIssue(where, f"{a.ip} is already on {owners[a.ip]}"))
            owners.setdefault(a.ip, iface.name)
            if a.network in subnets and subnets[a.network] != iface.name:
                issues.append(
                    ConfigIssue(where, f"subnet {a.network} is already on {subnets[a.network]}")
                )
            else:
                # A subnet inside (or around) another interface's: which link a
                # neighbour is on would depend on the longest prefix, not the config.
                other = next(
                    (n for n, on in subnets.items() if on != iface.name and _overlap(n, a.network)),
                    None,
                )
                if other is not None:
                    issues.append(
                        ConfigIssue(
                            where, f"subnet {a.network} overlaps {subnets[other]}'s {other}"
                        )
                    )
            subnets.setdefault(a.network, iface.name)
        if iface.mtu is not None and iface.mtu < 1280 and any(a.version == 6 for a in addrs):
            issues.append(
                ConfigIssue(
                    f"interface[{i}].mtu",
                    f"{iface.mtu} is below 1280, the least IPv6 allows, and the interface has an"
                    " IPv6 address",
                )
            )
    seen_prefixes: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int] = {}
    for i, route in enumerate(cfg.route):
        prefix = ipaddress.ip_network(route.prefix)
        if prefix in seen_prefixes:
            issues.append(
                ConfigIssue(
                    f"route[{i}].prefix", f"{prefix} is already route[{seen_prefixes[prefix]}]"
                )
            )
        seen_prefixes.setdefault(prefix, i)
        if prefix in subnets:
            issues.append(
                ConfigIssue(
                    f"route[{i}].prefix", f"{prefix} is the connected subnet of {subnets[prefix]}"
                )
            )
        for j, text in enumerate(route.via):
            where = f"route[{i}].via[{j}]"
            hop = _parse_next_hop(text)
            if hop.address.version != prefix.version:
                issues.append(ConfigIssue(where, f"{text} is not of the same family as {prefix}"))
                continue
            if hop.interface is not None:
                if hop.interface not in names:
                    issues.append(ConfigIssue(where, f"no interface named {hop.interface!r}"))
                continue
            if hop.address in owners:
                issues.append(ConfigIssue(where, f"{hop.address} is hopgate's own address"))
                continue
            if not any(hop.address in net for net in subnets):
                issues.append(
                    ConfigIssue(
                        where,
                        f"{hop.address} is not on the subnet of any interface"
                        " (next hops must be neighbours)",
                    )
                )
    roles = _Roles(cfg)
    issues += _check_hosts(cfg, names, roles)
    if cfg.nat is not None:
        issues += _check_nat(cfg, cfg.nat, names, roles)
    issues += _check_services(cfg, subnets, owners, roles)
    if cfg.relay is not None:
        issues += _check_relay(cfg, cfg.relay, names, owners, roles)
    if cfg.bgp is not None:
        issues += _check_bgp(cfg, cfg.bgp)
    return issues


def _bgp_session(cfg: Config, neighbor: IPAddress) -> tuple[str, IPAddress, IPAddress] | None:
    """Where a BGP session with ``neighbor`` runs: (the interface, the host
    address it runs from, hopgate's own address there, the routes' next hop);
    None if no interface has a host address on the neighbour's subnet, or no
    address of its own of that family."""
    for iface in cfg.interface:
        hosts = iface.host_interfaces()
        local = next((h for h in hosts if neighbor in h.network and h.ip != neighbor), None)
        if local is None:
            continue
        own = [a for a in iface.interfaces() if a.version == neighbor.version]
        best = next((a for a in own if neighbor in a.network), own[0] if own else None)
        if best is None:
            return None
        return iface.name, local.ip, best.ip
    return None


def _first_host_v4(cfg: Config) -> ipaddress.IPv4Address | None:
    for iface in cfg.interface:
        for a in iface.host_interfaces():
            if isinstance(a, ipaddress.IPv4Interface):
                return a.ip
    return None


def _check_bgp(cfg: Config, bgp: BgpConfig) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    seen: dict[str, int] = {}
    for i, n in enumerate(bgp.neighbor):
        where = f"bgp.neighbor[{i}].address"
        addr = ipaddress.ip_address(n.address)
        if str(addr) in seen:
            issues.append(ConfigIssue(where, f"{addr} is already bgp.neighbor[{seen[str(addr)]}]"))
        seen.setdefault(str(addr), i)
        if _bgp_session(cfg, addr) is None:
            on = _on_link(cfg, addr)
            if on is None:
                why = "no interface has a host address on its subnet"
            else:
                why = f"interface {on!r} has no host address on its subnet"
            issues.append(
                ConfigIssue(
                    where,
                    f"{why}: BIRD's session runs from one (add it to that interface's"
                    f" host_addresses), and its routes point to hopgate's own IPv{addr.version}"
                    " address there",
                )
            )
    if bgp.router_id is not None:
        if ipaddress.ip_address(bgp.router_id).version != 4:
            issues.append(ConfigIssue("bgp.router_id", "a router ID is an IPv4 address"))
    elif _first_host_v4(cfg) is None:
        issues.append(
            ConfigIssue(
                "bgp.router_id", "needed: no interface has an IPv4 host address to take it from"
            )
        )
    keepalive = bgp.keepalive_time
    if keepalive is not None and keepalive >= bgp.hold_time:
        issues.append(
            ConfigIssue(
                "bgp.keepalive_time", f"{keepalive} is not below hold_time ({bgp.hold_time})"
            )
        )
    return issues


# An address can have one role only: hopgate's own, a next hop, a backend, or one
# of the addresses hopgate translates to and answers for (VIP, LIP, pool,
# published).  What may share an address on purpose: a pool or a published
# address and the interface's own (masquerade, the README's DNAT), a pool and a
# published address (one outside address for both; DNAT ports are reserved),
# and several services' VIPs, LIPs and backends (one VIP serves several ports;
# the connection table keeps the services' local ports on a LIP apart).
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class _Role:
    kind: Literal["own", "via", "backend", "vip", "lip", "pool", "published", "host"]
    what: str  # how a message names it: "198.18.2.2 is <what>"


class _Roles:
    """Every address the config names, with the first place it takes each role."""

    def __init__(self, cfg: Config) -> None:
        self._by: dict[tuple[IPAddress, str], _Role] = {}
        for iface in cfg.interface:
            for a in iface.interfaces():
                self._add(a.ip, _Role("own", f"{iface.name}'s own address"))
        for i, iface in enumerate(cfg.interface):
            for j, a in enumerate(iface.host_interfaces()):
                what = f"a host address (interface[{i}].host_addresses[{j}])"
                self._add(a.ip, _Role("host", what))
        for i, route in enumerate(cfg.route):
            for j, text in enumerate(route.via):
                hop = _parse_next_hop(text).address
                self._add(hop, _Role("via", f"a next hop (route[{i}].via[{j}])"))
        for i, svc in enumerate(cfg.service):
            self._add(ipaddress.ip_address(svc.vip), _Role("vip", f"the VIP of service[{i}]"))
            for j, text in enumerate(svc.local_addresses):
                what = f"a LIP (service[{i}].local_addresses[{j}])"
                self._add(ipaddress.ip_address(text), _Role("lip", what))
            for j, b in enumerate(svc.backend):
                what = f"a backend (service[{i}].backend[{j}])"
                self._add(ipaddress.ip_address(b.address), _Role("backend", what))
        if cfg.nat is not None:
            for i, sn in enumerate(cfg.nat.snat):
                for j, text in enumerate(sn.pool):
                    what = f"a NAT pool address (nat.snat[{i}].pool[{j}])"
                    self._add(ipaddress.ip_address(text), _Role("pool", what))
            for i, d in enumerate(cfg.nat.dnat):
                what = f"published by nat.dnat[{i}]"
                self._add(parse_endpoint(d.published)[0], _Role("published", what))

    def _add(self, a: IPAddress, role: _Role) -> None:
        self._by.setdefault((a, role.kind), role)

    def clash(self, a: IPAddress, subject: str) -> str | None:
        """Why ``a``, given as ``subject`` (a kind of role), is wrong, if it is:
        the first role it may not share, and what sharing it would do."""
        for kind in _CLASHES[subject]:
            role = self._by.get((a, kind))
            if role is not None:
                return f"{a} is {role.what}{_CLASH_REASON[subject, kind]}"
        return None


# For each role: the roles it may not share an address with, in the order they
# are reported (one problem per key path).  A pair is checked from one side
# only, so that it is reported once.
_CLASHES: dict[str, tuple[str, ...]] = {
    "vip": ("own", "via", "backend", "pool", "published"),
    "lip": ("own", "via", "backend", "vip", "pool", "published"),
    "pool": ("via", "backend"),
    "published": ("via", "backend"),
    "backend": ("own", "host"),
    "dnat-inside": ("own", "vip", "lip", "pool", "published", "host"),
    "peer": ("vip", "lip", "pool", "published", "host"),
    "host": ("own", "via", "vip", "lip", "pool", "published"),
}
_TRANSLATED = ("vip", "lip", "pool", "published")
_CLASH_REASON: dict[tuple[str, str], str] = {
    **{(s, "via"): ": hopgate would answer ARP/ND for its own gateway" for s in _TRANSLATED},
    **{
        (s, "backend"): ": hopgate would take the backend's address for its own"
        for s in _TRANSLATED
    },
    **{("vip", k): "; a VIP is its own" for k in ("own", "pool", "published")},
    ("lip", "own"): "; a LIP is its own (health checks go from the interface's)",
    **{("lip", k): "; a LIP is its own" for k in ("vip", "pool", "published")},
    ("backend", "own"): "; a backend is another host",
    **{
        ("dnat-inside", k): "; the inside address is another host's"
        for k in ("own", "vip", "lip", "pool", "published")
    },
    **{("peer", k): "; peers are the other nodes" for k in ("vip", "lip", "pool", "published")},
    ("backend", "host"): "; hopgate passes the host's packets up from its link, never routes to it",
    ("dnat-inside", "host"): (
        "; hopgate passes the host's packets up from its link, never routes to it"
    ),
    ("peer", "host"): "; peers are the other nodes",
    ("host", "own"): "; a host address is the host's, not hopgate's",
    ("host", "via"): ": the host is not a next hop (hopgate never routes to it)",
    **{
        ("host", k): ": hopgate answers for it itself, the host would never hear of it"
        for k in ("vip", "lip", "pool", "published")
    },
}


def _check_hosts(cfg: Config, names: dict[str, int], roles: _Roles) -> list[ConfigIssue]:
    """The host ports: each a name no other interface has, each address the
    host's alone and on a subnet of its interface (the host is reached on that
    link: hopgate passes up only what arrives there)."""
    issues: list[ConfigIssue] = []
    ports: dict[str, int] = {}  # host port name: its interface's index
    seen: dict[IPAddress, str] = {}
    for i, iface in enumerate(cfg.interface):
        where = f"interface[{i}]"
        name = iface.host_port()
        if name is None:
            if iface.host_name is not None:
                issues.append(
                    ConfigIssue(
                        f"{where}.host_name",
                        "names the host port, which host_addresses makes: give them too",
                    )
                )
            continue
        hint = "" if iface.host_name else f" (the default for {iface.name}: set host_name)"
        if name in names:
            issues.append(
                ConfigIssue(
                    f"{where}.host_name", f"{name!r} is interface[{names[name]}]'s name{hint}"
                )
            )
        elif name in ports:
            issues.append(
                ConfigIssue(
                    f"{where}.host_name",
                    f"{name!r} is already interface[{ports[name]}]'s host port{hint}",
                )
            )
        ports.setdefault(name, i)
        own = iface.interfaces()
        for j, a in enumerate(iface.host_interfaces()):
            path = f"{where}.host_addresses[{j}]"
            if a.ip in seen:
                issues.append(ConfigIssue(path, f"{a.ip} is already {seen[a.ip]}"))
                continue
            seen[a.ip] = path
            if clash := roles.clash(a.ip, "host"):
                issues.append(ConfigIssue(path, clash))
            elif not any(a.ip in x.network for x in own if x.version == a.version):
                issues.append(
                    ConfigIssue(
                        path,
                        f"{a.ip} is not on a subnet of {iface.name}'s addresses (the host is"
                        f" reached on that link: hopgate passes up what arrives there for it)",
                    )
                )
    return issues


def _within(inner: _Net, outer: _Net) -> bool:
    return (
        inner.version == outer.version
        and inner.prefixlen >= outer.prefixlen
        and int(inner.network_address) & int(outer.netmask) == int(outer.network_address)
    )


def _overlap(a: _Net, b: _Net) -> bool:
    return _within(a, b) or _within(b, a)


def _on_link(cfg: Config, a: IPAddress) -> str | None:
    """The interface whose subnet holds ``a``."""
    for iface in cfg.interface:
        if any(a in x.network for x in iface.interfaces() if x.version == a.version):
            return iface.name
    return None


def _reached_only_by(cfg: Config, net: _Net, name: str) -> str | None:
    """How the inside prefix ``net`` lies behind interface ``name`` (one of its
    subnets, or every route toward it leaves by it), if it does."""
    for iface in cfg.interface:
        if iface.name != name:
            continue
        for x in iface.interfaces():
            if _overlap(x.network, net):
                verb = "is" if x.network == net else "overlaps"
                return f"{net} {verb} {name}'s subnet {x.network}"
    # (prefix, the interfaces it leaves by, its key path); connected subnets first
    ways: list[tuple[_Net, set[str], str]] = [
        (x.network, {iface.name}, "")
        for iface in cfg.interface
        for x in iface.interfaces()
        if x.version == net.version
    ]
    for i, route in enumerate(cfg.route):
        prefix = ipaddress.ip_network(route.prefix)
        hops = [_parse_next_hop(v) for v in route.via]
        out = {h.interface or _on_link(cfg, h.address) for h in hops} - {None}
        if prefix.version == net.version and out:
            ways.append((prefix, {o for o in out if o is not None}, f"route[{i}]"))
    around = [w for w in ways if _within(net, w[0])]
    used = [max(around, key=lambda w: w[0].prefixlen)] if around else []
    used += [w for w in ways if _within(w[0], net) and w[0] != net]
    if used and all(w[1] == {name} for w in used):
        return f"{net} is routed out of {name} ({', '.join(w[2] for w in used)})"
    return None


def _check_relay(
    cfg: Config,
    relay: RelayConfig,
    names: dict[str, int],
    owners: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str],
    roles: _Roles,
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for j, name in enumerate(relay.interfaces):
        if name not in names:
            issues.append(ConfigIssue(f"relay.interfaces[{j}]", f"no interface named {name!r}"))
    nets = [a.network for i in cfg.interface if i.name in relay.interfaces for a in i.interfaces()]
    for j, text in enumerate(relay.peers):
        peer = ipaddress.ip_address(text)
        if peer in owners:
            issues.append(
                ConfigIssue(f"relay.peers[{j}]", f"{peer} is {owners[peer]}'s own address")
            )
        elif clash := roles.clash(peer, "peer"):
            issues.append(ConfigIssue(f"relay.peers[{j}]", clash))
        elif not any(peer in net for net in nets):
            issues.append(
                ConfigIssue(
                    f"relay.peers[{j}]",
                    f"{peer} is not on a subnet of the relay's interfaces (peers are neighbours)",
                )
            )
    if relay.min_mtu is not None and relay.max_mtu is not None and relay.min_mtu > relay.max_mtu:
        issues.append(ConfigIssue("relay.min_mtu", "must not be above max_mtu"))
    if relay.second_chance and not relay.peers:
        issues.append(
            ConfigIssue("relay.second_chance", "needs peers: the copies go to each peer by unicast")
        )
    if relay.second_chance and not cfg.service:
        issues.append(
            ConfigIssue(
                "relay.second_chance",
                "needs a [[service]]: it hands on segments of load-balanced connections",
            )
        )
    return issues


def _check_services(
    cfg: Config,
    subnets: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str],
    owners: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str],
    roles: _Roles,
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    seen: dict[tuple[str, str, int], int] = {}
    for i, svc in enumerate(cfg.service):
        where = f"service[{i}]"
        vip = ipaddress.ip_address(svc.vip)
        if vip in owners:
            issues.append(
                ConfigIssue(
                    f"{where}.vip", f"{vip} is {owners[vip]}'s own address; a VIP is its own"
                )
            )
        elif clash := roles.clash(vip, "vip"):
            issues.append(ConfigIssue(f"{where}.vip", clash))
        key = (svc.protocol, str(vip), svc.port)
        if key in seen:
            issues.append(
                ConfigIssue(
                    f"{where}.port",
                    f"{svc.protocol}/{_endpoint_text(vip, svc.port)}"
                    f" is already service[{seen[key]}]",
                )
            )
        seen.setdefault(key, i)
        lips: dict[IPAddress, int] = {}
        for j, text in enumerate(svc.local_addresses):
            lip = ipaddress.ip_address(text)
            if lip in lips:
                issues.append(
                    ConfigIssue(
                        f"{where}.local_addresses[{j}]",
                        f"{lip} is already local_addresses[{lips[lip]}]",
                    )
                )
                continue
            lips[lip] = j
            if lip.version != vip.version:
                issues.append(
                    ConfigIssue(
                        f"{where}.local_addresses[{j}]", f"{lip} is not of the family of {vip}"
                    )
                )
            elif not any(lip in net for net in subnets):
                issues.append(
                    ConfigIssue(
                        f"{where}.local_addresses[{j}]",
                        f"{lip} is not on the subnet of any interface (backends answer it there)",
                    )
                )
            elif clash := roles.clash(lip, "lip"):
                issues.append(ConfigIssue(f"{where}.local_addresses[{j}]", clash))
        backends: dict[tuple[IPAddress, int], int] = {}
        for j, b in enumerate(svc.backend):
            a = ipaddress.ip_address(b.address)
            if a.version != vip.version:
                issues.append(
                    ConfigIssue(
                        f"{where}.backend[{j}].address", f"{a} is not of the family of {vip}"
                    )
                )
            elif clash := roles.clash(a, "backend"):
                issues.append(ConfigIssue(f"{where}.backend[{j}].address", clash))
            elif (a, b.port or svc.port) in backends:
                # twice in one service: twice the weight, checked twice
                issues.append(
                    ConfigIssue(
                        f"{where}.backend[{j}]",
                        f"{_endpoint_text(a, b.port or svc.port)} is already"
                        f" backend[{backends[a, b.port or svc.port]}]",
                    )
                )
            backends.setdefault((a, b.port or svc.port), j)
        h = svc.health
        kind = h.kind or (HealthKind.TCP if svc.protocol == "tcp" else HealthKind.ICMP)
        if kind in (HealthKind.TCP, HealthKind.HTTP) and svc.protocol != "tcp":
            issues.append(
                ConfigIssue(
                    f"{where}.health.kind", f"a {kind} check needs a tcp service; use icmp or none"
                )
            )
        if h.timeout_ms > h.interval_ms:
            issues.append(
                ConfigIssue(f"{where}.health.timeout_ms", "must not be longer than interval_ms")
            )
        if h.http_status[0] > h.http_status[1]:
            issues.append(ConfigIssue(f"{where}.health.http_status", "give [lowest, highest]"))
        if svc.scheduler == Scheduler.MAGLEV and not maglev.is_prime(svc.maglev_table_size):
            issues.append(
                ConfigIssue(
                    f"{where}.maglev_table_size", f"{svc.maglev_table_size} is not prime (65537 is)"
                )
            )
    return issues


def _check_nat(
    cfg: Config, nat: NatConfig, names: dict[str, int], roles: _Roles
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    nets = {i.name: [a for a in i.interfaces()] for i in cfg.interface}
    all_ifaces = [a for addrs in nets.values() for a in addrs]
    for i, sn in enumerate(nat.snat):
        where = f"nat.snat[{i}]"
        if sn.interface not in names:
            issues.append(ConfigIssue(f"{where}.interface", f"no interface named {sn.interface!r}"))
            continue
        own = nets[sn.interface]
        pool = [ipaddress.ip_address(text) for text in sn.pool]
        for j, a in enumerate(pool):
            if not any(a in x.network for x in own if x.version == a.version):
                issues.append(
                    ConfigIssue(
                        f"{where}.pool[{j}]",
                        f"{a} is not on a subnet of {sn.interface} (hopgate answers ARP/ND"
                        " for pool addresses there)",
                    )
                )
            elif a in pool[:j]:
                issues.append(
                    ConfigIssue(f"{where}.pool[{j}]", f"{a} is already pool[{pool.index(a)}]")
                )
            elif clash := roles.clash(a, "pool"):
                issues.append(ConfigIssue(f"{where}.pool[{j}]", clash))
        for j, text in enumerate(sn.inside):
            net = ipaddress.ip_network(text)
            has = any(x.version == net.version for x in own) or any(
                ipaddress.ip_address(p).version == net.version for p in sn.pool
            )
            if not has:
                issues.append(
                    ConfigIssue(
                        f"{where}.inside[{j}]",
                        f"{sn.interface} has no IPv{net.version} address (nor the pool one) to"
                        f" translate {net} to",
                    )
                )
            elif behind := _reached_only_by(cfg, net, sn.interface):
                issues.append(
                    ConfigIssue(
                        f"{where}.inside[{j}]",
                        f"{behind}: its traffic would be translated back out the interface it"
                        f" came from ({where}.interface)",
                    )
                )
    seen: dict[tuple[str, str, int | None], int] = {}
    for i, d in enumerate(nat.dnat):
        where = f"nat.dnat[{i}]"
        pub, pub_port = parse_endpoint(d.published)
        ins, ins_port = parse_endpoint(d.inside)
        if pub.version != ins.version:
            issues.append(ConfigIssue(f"{where}.inside", f"{ins} is not of the family of {pub}"))
        elif clash := roles.clash(ins, "dnat-inside"):
            issues.append(ConfigIssue(f"{where}.inside", clash))
        if d.protocol == "all" and (pub_port or ins_port):
            issues.append(
                ConfigIssue(f"{where}.protocol", '"all" publishes whole addresses: give no ports')
            )
        if d.protocol != "all" and pub_port is None and ins_port is not None:
            issues.append(
                ConfigIssue(
                    f"{where}.published", "give the published port too, as in 198.18.2.1:8080"
                )
            )
        if not any(pub == x.ip or pub in x.network for x in all_ifaces if x.version == pub.version):
            issues.append(
                ConfigIssue(f"{where}.published", f"{pub} is not on a subnet of any interface")
            )
        elif clash := roles.clash(pub, "published"):
            issues.append(ConfigIssue(f"{where}.published", clash))
        key = (d.protocol, str(pub), pub_port)
        if key in seen:
            issues.append(
                ConfigIssue(f"{where}.published", f"already published by nat.dnat[{seen[key]}]")
            )
        seen.setdefault(key, i)
    return issues


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _pydantic_issues(error: ValidationError) -> list[ConfigIssue]:
    issues = []
    for e in error.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "is required"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif "input" in e and e["type"].endswith("_type"):
            msg = f"{msg} (got {e['input']!r})"
        issues.append(ConfigIssue(_path(loc), msg))
    return issues


def parse(text: str, source: str = "<config>") -> Config:
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [ConfigIssue("", f"not valid TOML: {e}")]) from None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, _pydantic_issues(e)) from None
    issues = _check_relations(cfg)
    if issues:
        raise ConfigError(source, issues)
    return cfg


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(p), [ConfigIssue("", f"cannot read: {e.strerror}")]) from None
    return parse(text, str(p))
