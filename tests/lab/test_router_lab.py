"""The router judged by the real tools, with a Linux kernel router in the same lab as
the reference (docs/behaviour.md, "Forwarding (IPv4 / IPv6)" and "The router's own
addresses", and issue 2's acceptance checks)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from hopgate.control.admin import fetch
from hopgate.lab import tools
from hopgate.lab.topologies import ADDR, HTTP_PORT, RouterLab

A = ADDR
V4_PATH = [A.gw_c4, A.r1_d4, A.server4]
V6_PATH = [A.gw_c6, A.r1_d6, A.server6]


@pytest.mark.parametrize(
    ("mode", "port"),
    [("udp", None), ("icmp", None), ("tcp", HTTP_PORT)],
    ids=["udp", "icmp", "tcp"],
)
@pytest.mark.parametrize("family", [4, 6])
def test_traceroute_lists_the_same_hops_as_a_kernel_router(
    hopgate_lab: RouterLab, kernel_lab: RouterLab, mode: str, port: int | None, family: int
) -> None:
    dst = A.server4 if family == 4 else A.server6
    expected = V4_PATH if family == 4 else V6_PATH
    ours = tools.traceroute(hopgate_lab.client, dst, mode, port=port)
    reference = tools.traceroute(kernel_lab.client, dst, mode, port=port)
    assert reference.path == expected, reference.run.output
    assert ours.path == expected, ours.run.output
    # every probe of every hop answered: no '*' anywhere
    assert all(len(h) >= 1 for h in ours.hops) and "*" not in ours.run.stdout, ours.run.output


@pytest.mark.parametrize("family", [4, 6])
def test_mtr_report_shows_no_loss(hopgate_lab: RouterLab, family: int) -> None:
    dst = A.server4 if family == 4 else A.server6
    r, hops = tools.mtr_report(hopgate_lab.client, dst, count=10)
    assert [h.host for h in hops] == (V4_PATH if family == 4 else V6_PATH), r.output
    assert all(h.loss_percent == 0.0 for h in hops), r.output


def test_frag_needed_from_hopgate_with_mtu_1400(
    hopgate_lab: RouterLab, kernel_lab: RouterLab
) -> None:
    for lab in (hopgate_lab, kernel_lab):
        _forget_path_mtus(lab)
        p = tools.ping(lab.client, A.server4, count=1, size=1472, dont_fragment=True)
        assert p.received == 0, (lab.gateway, p.run.output)
        assert p.errors and p.errors[0].startswith(f"From {A.gw_c4} "), (lab.gateway, p.run.output)
        assert "Frag needed and DF set (mtu = 1400)" in p.errors[0], (lab.gateway, p.run.output)


def test_packet_too_big_from_hopgate_with_mtu_1400(
    hopgate_lab: RouterLab, kernel_lab: RouterLab
) -> None:
    for lab in (hopgate_lab, kernel_lab):
        _forget_path_mtus(lab)
        p = tools.ping(lab.client, A.server6, count=1, size=1452, dont_fragment=True)
        assert p.errors and p.errors[0].startswith(f"From {A.gw_c6} "), (lab.gateway, p.run.output)
        assert "Packet too big: mtu=1400" in p.errors[0], (lab.gateway, p.run.output)


def _forget_path_mtus(lab: RouterLab) -> None:
    """The client learned the path MTU in an earlier test (the kernel lab serves
    both of hopgate's data planes): forgotten, so that it asks again."""
    lab.client.run("ip", "-4", "route", "flush", "cache")
    lab.client.run("ip", "-6", "route", "flush", "cache")


@pytest.mark.parametrize("family", [4, 6])
def test_tracepath_reports_pmtu_1400(hopgate_lab: RouterLab, family: int) -> None:
    t = tools.tracepath(hopgate_lab.client, A.server4 if family == 4 else A.server6)
    assert t.reached and t.pmtu == 1400, t.run.output


@pytest.mark.parametrize("dst", [A.gw_c4, A.gw_u4, A.gw_c6, A.gw_u6])
def test_ping_to_hopgates_addresses_answers(hopgate_lab: RouterLab, dst: str) -> None:
    p = tools.ping(hopgate_lab.client, dst, count=3)
    assert p.received == 3, p.run.output


def test_big_ping_to_hopgate_is_reassembled_and_answered(hopgate_lab: RouterLab) -> None:
    p = tools.ping(hopgate_lab.client, A.gw_c4, count=2, size=4000)
    assert p.received == 2, p.run.output
    p6 = tools.ping(hopgate_lab.client, A.gw_c6, count=2, size=4000)
    assert p6.received == 2, p6.run.output


@pytest.mark.parametrize("mode", ["udp", "udp-fixed"])
@pytest.mark.parametrize("dst", [A.gw_c4, A.gw_c6])
def test_udp_traceroute_to_hopgate_ends_there(hopgate_lab: RouterLab, dst: str, mode: str) -> None:
    t = tools.traceroute(hopgate_lab.client, dst, mode)
    assert t.path == [dst], t.run.output


@pytest.mark.parametrize("dst", [A.gw_c4, A.gw_c6])
def test_tcp_connect_to_hopgate_is_refused_at_once(hopgate_lab: RouterLab, dst: str) -> None:
    outcome, seconds = tools.tcp_connect(hopgate_lab.client, dst, 22)
    assert outcome == "refused" and seconds < 0.5


def test_unrouted_destination_gets_net_unreachable(
    hopgate_lab: RouterLab, kernel_lab: RouterLab
) -> None:
    for lab in (hopgate_lab, kernel_lab):
        # The kernel limits these errors apart from its ICMP sysctls (ip_error:
        # a burst of 6, then one a second per source, a global setting): the
        # reference gets three tries a second apart, hopgate one.
        tries = 3 if lab.mode == "kernel" else 1
        for dst, want in (
            (A.unrouted4, f"From {A.gw_c4} icmp_seq=1 Destination Net Unreachable"),
            (A.unrouted6, f"From {A.gw_c6} icmp_seq=1 Destination unreachable: No route"),
        ):
            for attempt in range(tries):
                if attempt:
                    time.sleep(1.1)
                p = tools.ping(lab.client, dst, count=1)
                if p.errors == [want]:
                    break
            assert p.errors == [want], (lab.gateway, p.run.output)


def test_absent_host_gets_host_unreachable(hopgate_lab: RouterLab, kernel_lab: RouterLab) -> None:
    for lab in (hopgate_lab, kernel_lab):
        p = tools.ping(lab.client, A.absent4, count=1, wait=5)
        assert p.errors == [f"From {A.gw_c4} icmp_seq=1 Destination Host Unreachable"], p.run.output
        p6 = tools.ping(lab.client, A.absent6, count=1, wait=5)
        assert p6.errors == [
            f"From {A.gw_c6} icmp_seq=1 Destination unreachable: Address unreachable"
        ], p6.run.output


@pytest.mark.parametrize("host", [A.server4, f"[{A.server6}]"])
def test_curl_of_10_megabytes_through_hopgate(hopgate_lab: RouterLab, host: str) -> None:
    d = tools.curl(hopgate_lab.client, f"http://{host}:{HTTP_PORT}/10M.bin")
    assert d.ok and d.size == 10 * 1024 * 1024, d.run.output


def test_iperf3_tcp_through_hopgate(hopgate_lab: RouterLab) -> None:
    r, result = tools.iperf3(hopgate_lab.client, A.server4, seconds=3)
    assert result is not None and "error" not in result, r.output
    received = result["end"]["sum_received"]["bytes"]
    assert received > 1_000_000, r.output


def test_status_counts_what_happened(hopgate_lab: RouterLab) -> None:
    tools.ping(hopgate_lab.client, A.server4, count=1)
    tools.ping(hopgate_lab.client, A.server4, count=1, size=1472, dont_fragment=True)
    state = hopgate_lab.status()
    assert state["internal_errors"] == 0
    sent = {(e["family"], e["type"], e["code"]): e["count"] for e in state["icmp_sent"]}
    assert sent.get((4, 3, 4), 0) >= 1
    by_name = {i["name"]: i for i in state["interfaces"]}
    assert by_name["gw-c"]["rx_packets"] > 0 and by_name["gw-u"]["tx_packets"] > 0
    assert state["drops"].get("mtu-exceeded", 0) >= 1


def test_linux_default_rate_limit_from_config_holds_end_to_end() -> None:
    """With [icmp] at its defaults (Linux's), 20 quick TTL=1 pings get 6 Time
    Exceeded: the burst; the other 14 are suppressed and counted."""
    with RouterLab("hopgate", servers=False, icmp_config="") as lab:
        r = tools.run(
            lab.client, "ping", "-n", "-t", "1", "-c", "20", "-i", "0.01", "-W", "1", A.server4
        )
        exceeded = [line for line in r.stdout.splitlines() if "Time to live exceeded" in line]
        assert len(exceeded) == 6, r.output
        state = lab.status()
        limited = {(e["type"], e["limit"]): e["count"] for e in state["icmp_rate_limited"]}
        assert limited == {(11, "per-destination"): 14}


def test_the_fast_path_forwards_and_the_pipeline_answers(hopgate_lab: RouterLab) -> None:
    """With the XDP fast path, plain traffic is forwarded by it (its counter
    grows by the pings' echoes at least) while what the pipeline must answer
    still reaches it (the pings to gw and Time Exceeded above work)."""
    if hopgate_lab.dataplane != "xdp":
        pytest.skip("AF_PACKET: no fast path")
    gw = hopgate_lab.gateway
    before = hopgate_lab.status()["dataplane"]
    assert before["mode"] == "xdp", f"{gw} runs without its fast path: {before}"
    p = tools.ping(hopgate_lab.client, A.server4, count=20, interval=0.05)
    p6 = tools.ping(hopgate_lab.client, A.server6, count=20, interval=0.05)
    assert p.received == 20 and p6.received == 20, f"{gw}:\n{p.run.output}\n{p6.run.output}"
    after = hopgate_lab.status()["dataplane"]
    # Each echo and each reply crosses gw once; the first of each may be the
    # pipeline's while a neighbour is resolved.
    assert after["forwarded"] - before["forwarded"] >= 70, f"{gw}: {before} -> {after}"
    assert after["sync_errors"] == 0, f"{gw}: {after}"
    # Shown per interface, in status and /metrics.
    state = hopgate_lab.status()
    by_name = {i["name"]: i["fastpath"] for i in state["interfaces"]}
    assert by_name["gw-c"]["forwarded"] >= 35 and by_name["gw-u"]["forwarded"] >= 35, by_name
    cmd = [sys.executable, "-m", "hopgate", "status", "-s", hopgate_lab.admin_socket]
    env = {"COLUMNS": "160"}
    text = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    assert "data plane: XDP (native)" in text and "fast path" in text, f"{gw}:\n{text}"
    metrics = fetch(hopgate_lab.admin_socket, "/metrics").decode()
    assert 'hopgate_fastpath_frames_total{interface="gw-c",verdict="forwarded"}' in metrics
    assert "hopgate_fastpath_enabled 1.0" in metrics, metrics
