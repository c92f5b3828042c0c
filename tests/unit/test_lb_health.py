"""Health checks hopgate sends from its own data plane, with a fake clock."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP

from hopgate.pipeline.lb import HealthKind, HealthSpec
from tests.unit.frames import drops
from tests.unit.lb_frames import (
    BE1,
    BE2,
    CLIENT4,
    GW_S4,
    VIP4,
    B,
    S,
    answer_syns,
    from_backend,
    lb_router,
    logged,
    probes,
    service,
    via_b,
)


def test_tcp_check_sends_syn_and_resets_after_the_syn_ack() -> None:
    r = lb_router(
        service(health=HealthSpec(kind=HealthKind.TCP, interval=2, timeout=1, rise=2, fall=3))
    )
    out = r.poll(0.0)
    syns = [p for p in probes(out) if p.haslayer(TCP)]
    assert {p[IP].dst for p in syns} == {BE1, BE2} and all(p[IP].src == GW_S4 for p in syns)
    assert all(p[TCP].flags == "S" and p[TCP].dport == 80 for p in syns)
    rsts = probes(answer_syns(r, out, 0.1))
    assert len(rsts) == 2 and all(p[TCP].flags == "R" for p in rsts)
    backends = r.nat.services.all[0].backends  # type: ignore[union-attr]
    assert all(b.up and b.checks["ok"] == 1 for b in backends)


def test_a_silent_backend_goes_down_after_fall_checks_and_its_connections_stay() -> None:
    r = lb_router(
        service(health=HealthSpec(kind=HealthKind.TCP, interval=2, timeout=1, rise=2, fall=3))
    )
    r.poll(0.0)
    # a connection to each backend first
    for sport in range(6000, 6004):
        r.process(via_b(IP(src=CLIENT4, dst=VIP4) / TCP(sport=sport, dport=80, flags="S")), B, 0.5)
    backends = {b.name: b for b in r.nat.services.all[0].backends}  # type: ignore[union-attr]
    be1 = backends["198.18.20.11:80"]
    kept = len(be1.conns)
    assert kept == 1
    # BE2 answers its probes, BE1 never does
    t = 0.0
    while t < 7.0:
        out = r.poll(t)
        answer_syns(r, out, t + 0.1, from_be=(BE2,))
        t += 1.0
    assert not be1.up and backends["198.18.20.12:80"].up
    assert any("backend 198.18.20.11:80 is down" in e for e in logged(r))
    assert len(be1.conns) == kept  # existing connections are left alone
    for sport in range(7000, 7010):  # new connections all go to the living one
        out = r.process(
            via_b(IP(src=CLIENT4, dst=VIP4) / TCP(sport=sport, dport=80, flags="S")), B, 8.0
        )
        assert probes(out)[0][IP].dst == BE2


def test_close_policy_forgets_a_failed_backends_connections() -> None:
    health = HealthSpec(kind=HealthKind.TCP, interval=2, timeout=1, rise=2, fall=1)
    r = lb_router(service(health=health, on_backend_down="close"))
    for sport in range(6000, 6004):
        r.process(via_b(IP(src=CLIENT4, dst=VIP4) / TCP(sport=sport, dport=80, flags="S")), B, 0.0)
    out = r.poll(0.0)
    answer_syns(r, out, 0.1, from_be=(BE2,))
    r.poll(1.5)
    be1 = r.nat.services.all[0].backends[0]  # type: ignore[union-attr]
    assert not be1.up and not be1.conns
    assert any("1 connections closed" in e for e in logged(r))


def test_a_backend_comes_back_after_rise_successes() -> None:
    r = lb_router(
        service(health=HealthSpec(kind=HealthKind.TCP, interval=2, timeout=1, rise=2, fall=1))
    )
    be1 = r.nat.services.all[0].backends[0]  # type: ignore[union-attr]
    r.poll(0.0)
    r.poll(1.5)  # timed out: down
    assert not be1.up
    for t in (2.0, 4.0):
        answer_syns(r, r.poll(t), t + 0.1)
    assert be1.up


def test_a_reset_fails_the_check_at_once() -> None:
    r = lb_router(
        service(health=HealthSpec(kind=HealthKind.TCP, interval=2, timeout=1, rise=1, fall=1))
    )
    out = r.poll(0.0)
    for p in probes(out):
        if p[IP].dst == BE1:
            rst = IP(src=BE1, dst=p[IP].src) / TCP(
                sport=80, dport=p[TCP].sport, flags="RA", ack=p[TCP].seq + 1
            )
            r.process(from_backend(rst, "02:00:00:00:05:0b"), S, 0.1)
    assert not r.nat.services.all[0].backends[0].up  # type: ignore[union-attr]


def test_icmp_check() -> None:
    r = lb_router(
        service(health=HealthSpec(kind=HealthKind.ICMP, interval=2, timeout=1, rise=1, fall=1))
    )
    out = r.poll(0.0)
    pings = [p for p in probes(out) if p.haslayer(ICMP)]
    assert len(pings) == 2 and all(p[ICMP].type == 8 for p in pings)
    p = next(p for p in pings if p[IP].dst == BE2)
    reply = (
        IP(src=BE2, dst=p[IP].src) / ICMP(type=0, id=p[ICMP].id, seq=p[ICMP].seq) / p[ICMP].payload
    )
    r.process(from_backend(reply), S, 0.2)
    r.poll(1.5)
    be1, be2 = r.nat.services.all[0].backends  # type: ignore[union-attr]
    assert be2.up and be2.checks["ok"] == 1 and not be1.up


def _http_exchange(status: bytes) -> bool:
    r = lb_router(
        service(
            health=HealthSpec(
                kind=HealthKind.HTTP, interval=2, timeout=1, rise=1, fall=1, http_path="/health"
            )
        )
    )
    be2 = r.nat.services.all[0].backends[1]  # type: ignore[union-attr]
    syn = next(p for p in probes(r.poll(0.0)) if p[IP].dst == BE2)
    synack = IP(src=BE2, dst=syn[IP].src) / TCP(
        sport=80, dport=syn[TCP].sport, flags="SA", seq=1000, ack=syn[TCP].seq + 1
    )
    (request,) = probes(r.process(from_backend(synack), S, 0.1))
    assert request[TCP].flags == "PA" and bytes(request[TCP].payload).startswith(
        b"GET /health HTTP/1.0\r\n"
    )
    answer = (
        IP(src=BE2, dst=syn[IP].src)
        / TCP(
            sport=80,
            dport=syn[TCP].sport,
            flags="PA",
            seq=1001,
            ack=request[TCP].seq + len(request[TCP].payload),
        )
        / (b"HTTP/1.0 " + status + b"\r\nContent-Length: 0\r\n\r\n")
    )
    (rst,) = probes(r.process(from_backend(answer), S, 0.2))
    assert rst[TCP].flags == "R" and rst[TCP].seq == request[TCP].seq + len(request[TCP].payload)
    # the server's FIN, crossing our reset, is taken quietly: no reset, no drop
    # (even once no probe is outstanding: be1's has timed out by then)
    r.poll(1.5)
    fin = answer.copy()
    fin[TCP].flags = "FA"
    fin[TCP].seq = 1001 + len(answer[TCP].payload)
    fin[TCP].remove_payload()
    del fin[IP].len, fin[IP].chksum, fin[TCP].chksum
    late = r.process(from_backend(fin), S, 1.6)
    assert probes(late) == [] and drops(late) == []
    return be2.up and be2.checks["ok"] == 1


def test_http_check_reads_the_status_line() -> None:
    assert _http_exchange(b"200 OK") is True
    assert _http_exchange(b"503 Service Unavailable") is False


def test_a_repeated_syn_ack_gets_the_same_request_again() -> None:
    r = lb_router(
        service(health=HealthSpec(kind=HealthKind.HTTP, interval=2, timeout=1, rise=1, fall=1))
    )
    be2 = r.nat.services.all[0].backends[1]  # type: ignore[union-attr]
    syn = next(p for p in probes(r.poll(0.0)) if p[IP].dst == BE2)
    synack = IP(src=BE2, dst=syn[IP].src) / TCP(
        sport=80, dport=syn[TCP].sport, flags="SA", seq=1000, ack=syn[TCP].seq + 1
    )
    (first,) = probes(r.process(from_backend(synack), S, 0.1))
    (again,) = probes(r.process(from_backend(synack), S, 0.2))  # our ACK was lost
    assert again[TCP].seq == first[TCP].seq == syn[TCP].seq + 1 and again[TCP].ack == 1001
    assert bytes(again[TCP].payload) == bytes(first[TCP].payload)
    answer = (
        IP(src=BE2, dst=syn[IP].src)
        / TCP(
            sport=80,
            dport=syn[TCP].sport,
            flags="PA",
            seq=1001,
            ack=first[TCP].seq + len(first[TCP].payload),
        )
        / b"HTTP/1.0 200 OK\r\n\r\n"
    )
    (rst,) = probes(r.process(from_backend(answer), S, 0.3))
    assert rst[TCP].flags == "R" and rst[TCP].seq == first[TCP].seq + len(first[TCP].payload)
    assert be2.up and be2.checks["ok"] == 1
