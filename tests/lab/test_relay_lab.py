"""Path MTU discovery behind ECMP (issue 5's acceptance checks), with a Linux router
hashing on addresses and ports in front of three nodes and a 1400-byte hop on the
client's path.  Lab A: plain Linux servers running ``hopgate relay``.  Lab B: three
hopgate load balancers sharing a VIP, with ``[relay]``, on each data plane (the
Python pipeline alone, and behind the XDP fast path)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hopgate.control.admin import fetch
from hopgate.lab import tools
from hopgate.lab.ecmplab import ECMP_ADDR, FILE, FILE_SIZE, NODES, EcmpLab
from hopgate.lab.netns import Namespace

A = ECMP_ADDR
DOWNLOADS = 30
STALL_TIMEOUT = 6.0  # long enough for a download that is not stuck (they take < 1 s)
BOUND = 20.0  # "within a short bound": every download, with the relay


@pytest.fixture(scope="module")
def servers() -> Iterator[EcmpLab]:
    with EcmpLab("servers") as lab:
        yield lab


@pytest.fixture(scope="module", params=["afpacket", "xdp"])
def cluster(request: pytest.FixtureRequest) -> Iterator[EcmpLab]:
    """Lab B on each data plane: the PMTU errors, the relay's copies and the
    peers' copies must reach the pipeline through the XDP program too."""
    with EcmpLab("hopgate", dataplane=request.param) as lab:
        yield lab


def _url(family: int) -> str:
    host = A.shared4 if family == 4 else f"[{A.shared6}]"
    return f"http://{host}/{FILE}"


def downloads(lab: EcmpLab, family: int, first_port: int, timeout: float) -> list[tools.Download]:
    lab.flush_path_mtus()  # every run starts from nothing learned
    return tools.curl_many(
        lab.ns("client"), _url(family), DOWNLOADS, first_port=first_port, timeout=timeout
    )


def complete(results: list[tools.Download]) -> int:
    return sum(d.ok and d.size == FILE_SIZE for d in results)


def counters(lab: EcmpLab, node: str) -> dict[str, int]:
    st = lab.status(node)
    iface = (st["relay"] if st.get("kind") != "relay" else st)["interfaces"][0]
    return {
        "seen": iface["seen"],
        "relayed": iface["relayed"],
        "missed": iface.get("missed", 0),
        **iface["dropped"],
    }


def ptb_frame(
    family: int, dst_mac: str, *, mtu: int | None = None, src: str | None = None, quote: int = 28
) -> bytes:
    """A fragmentation needed / Packet Too Big to the shared address about one of
    its full-size packets to the client."""
    if family == 4:
        big = bytes(IP(src=A.shared4, dst=A.client4, flags="DF") / TCP(sport=80, dport=50000))
        return bytes(
            Ether(dst=dst_mac)
            / IP(src=src or A.r1_e4, dst=A.shared4)
            / ICMP(type=3, code=4, nexthopmtu=1400 if mtu is None else mtu)
            / Raw(big[:quote])
        )
    big = bytes(IPv6(src=A.shared6, dst=A.client6) / TCP(sport=80, dport=50000))
    return bytes(
        Ether(dst=dst_mac)
        / IPv6(src=src or A.r1_e6, dst=A.shared6)
        / ICMPv6PacketTooBig(mtu=1280 if mtu is None else mtu)
        / Raw(big[: quote + 20])
    )


def _mac(lab: EcmpLab, node: str) -> str:
    return lab.ns(node).mac("eth0")


def _icmp_out(ns: Namespace) -> tuple[int, int]:
    """(fragmentation needed, Packet Too Big) the kernel of ``ns`` has sent."""
    snmp = ns.run("cat", "/proc/net/snmp").stdout.splitlines()
    names, values = [line.split() for line in snmp if line.startswith("Icmp:")][:2]
    v4 = int(values[names.index("OutDestUnreachs")])
    snmp6 = dict(line.split() for line in ns.run("cat", "/proc/net/snmp6").stdout.splitlines())
    return v4, int(snmp6["Icmp6OutPktTooBigs"])


# -- lab A: Linux servers and hopgate relay ---------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_without_the_relay_some_downloads_stall(servers: EcmpLab, family: int) -> None:
    servers.stop_relays()
    results = downloads(servers, family, 20000 + family * 100, STALL_TIMEOUT)
    done = complete(results)
    # The errors all reach one server: its flows complete, the others' stall.
    assert 0 < done < DOWNLOADS, [d.run.output for d in results[:3]]


@pytest.mark.parametrize("family", [4, 6])
def test_with_the_relay_every_download_completes(servers: EcmpLab, family: int) -> None:
    servers.start_relays()
    sent_before = _icmp_out(servers.ns("r1"))
    seen_before = {n: counters(servers, n) for n in NODES}
    results = downloads(servers, family, 21000 + family * 100, BOUND)
    assert complete(results) == DOWNLOADS, [d.run.output for d in results if not d.ok][:3]
    # (the last errors may still be on their way to a relay: give them a moment)
    deadline = time.monotonic() + 5
    while True:
        after = {n: counters(servers, n) for n in NODES}
        sent = _icmp_out(servers.ns("r1"))[family // 6] - sent_before[family // 6]
        seen = sum(after[n]["seen"] - seen_before[n]["seen"] for n in NODES)
        if seen >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    relayed = sum(after[n]["relayed"] - seen_before[n]["relayed"] for n in NODES)
    # Every error r1 sent was seen once, by the server ECMP gave it to; the
    # copies that server broadcast were never captured, let alone relayed, again
    # (that would double the count).  A few more may be seen than r1 counted
    # after the baseline: errors about the flows the previous test left stalled,
    # sent just before it and still waiting in a relay's socket that had just
    # started (seen 200 for 191 sent, once, on a loaded machine).  A few fewer
    # too: r1 counts an error as it makes it, and the Linux hops on the way to
    # the relay may lose some when the machine is loaded (seen 203 of 221 once,
    # none dropped at the relays' sockets, every download complete).
    slack = max(10, sent // 10)
    assert sent > 0 and sent - slack <= seen <= sent + slack, (
        f"the relays ({servers.gateway()}) saw {seen} of the {sent} errors r1 sent: {after}"
    )
    assert 0 < relayed <= seen


def test_a_marked_copy_sent_by_unicast_is_not_relayed_again(servers: EcmpLab) -> None:
    servers.start_relay("n1")
    before = counters(servers, "n1")
    r1_before = _icmp_out(servers.ns("r1"))
    marked = bytearray(ptb_frame(4, _mac(servers, "n1")))
    marked[14 + 1] = 63 << 2  # the relay's DSCP mark
    marked[14 + 10 : 14 + 12] = b"\x00\x00"
    ip = IP(bytes(marked[14:]))
    del ip.chksum
    frame = bytes(Ether(bytes(marked[:14])) / ip)
    tools.inject(servers.ns("front"), "br0", [frame, ptb_frame(4, _mac(servers, "n1"))])
    time.sleep(0.3)
    after = counters(servers, "n1")
    assert after.get("relayed-copy", 0) - before.get("relayed-copy", 0) == 1
    # the unmarked one (and perhaps r1's real errors about earlier stalled flows)
    background = sum(_icmp_out(servers.ns("r1"))) - sum(r1_before)
    assert 1 <= after["relayed"] - before["relayed"] <= 1 + background


@pytest.mark.parametrize("kind", ["ebpf", "classic"])
def test_rate_limits_hold_under_a_flood_of_fake_errors(servers: EcmpLab, kind: str) -> None:
    # The limits in the kernel (the eBPF filter, where it loads: the default)
    # or in the relay (the classic filter): the same counts.
    servers.start_relays("--filter", kind)
    assert servers.status("n2")["filter"] == kind
    time.sleep(1.1)  # full buckets
    mac = _mac(servers, "n2")
    before = {n: counters(servers, n) for n in NODES}
    r1_before = _icmp_out(servers.ns("r1"))
    # one source, 2000 times: the per-source bucket (10/s, burst 10)
    sent, seconds = tools.inject(servers.ns("front"), "br0", [ptb_frame(4, mac)] * 2000)
    # each one seen, or counted as missed if the capture's buffer overflowed
    deadline = time.monotonic() + 5
    while True:
        mid = counters(servers, "n2")
        seen = mid["seen"] - before["n2"]["seen"] + mid["missed"] - before["n2"]["missed"]
        if seen >= 2000 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    relayed = mid["relayed"] - before["n2"]["relayed"]
    # (plus, perhaps, r1's real errors about flows an earlier test left stalled)
    background = sum(_icmp_out(servers.ns("r1"))) - sum(r1_before)
    assert sent == 2000 and 2000 <= seen <= 2000 + background, (mid, background)
    assert 1 <= relayed <= 10 + 10 * (seconds + 0.5) + 1, (relayed, seconds)
    # 3000 sources: the per-interface bucket (100/s, burst 100)
    frames = [ptb_frame(4, mac, src=f"198.18.{100 + i // 250}.{i % 250 + 1}") for i in range(3000)]
    sent, seconds = tools.inject(servers.ns("front"), "br0", frames)
    time.sleep(0.5)
    after = counters(servers, "n2")
    relayed = after["relayed"] - mid["relayed"]
    assert relayed <= 100 + 100 * (seconds + 0.5) + 1, (relayed, seconds)
    assert after.get("rate-limited-interface", 0) > 0
    # The other servers saw none of the copies n2 broadcast (the capture skips
    # link-layer broadcasts): at most the errors r1 sent meanwhile, about the
    # earlier tests' stalled flows that their servers still retransmit.
    from_r1 = sum(_icmp_out(servers.ns("r1"))) - sum(r1_before)
    others = sum(counters(servers, n)["seen"] - before[n]["seen"] for n in ("n1", "n3"))
    assert others <= from_r1, (others, from_r1)
    servers.start_relays()


def test_insane_mtus_and_missing_quotes_are_dropped_and_counted(servers: EcmpLab) -> None:
    servers.start_relay("n3")
    mac = _mac(servers, "n3")
    before = counters(servers, "n3")
    r1_before = _icmp_out(servers.ns("r1"))
    frames = [
        ptb_frame(4, mac, mtu=40, src="198.18.51.77"),
        ptb_frame(6, mac, mtu=1000, src="2001:2:0:51::77"),
        ptb_frame(4, mac, quote=20, src="198.18.51.78"),  # no transport bytes quoted
    ]
    tools.inject(servers.ns("front"), "br0", frames)
    time.sleep(0.3)
    after = counters(servers, "n3")
    assert after.get("mtu-insane", 0) - before.get("mtu-insane", 0) == 2
    assert after.get("no-quoted-packet", 0) - before.get("no-quoted-packet", 0) == 1
    # none of ours relayed (r1's real errors about earlier stalled flows may be)
    background = sum(_icmp_out(servers.ns("r1"))) - sum(r1_before)
    assert after["relayed"] - before["relayed"] <= background


def _broadcast_copies_of_one_error(lab: EcmpLab, node: str) -> int:
    """Send ``node`` one error; count the broadcasts of it seen on the segment."""
    only_ours = "ether broadcast and icmp and src host 198.18.51.99"  # not the lab's errors
    watch = lab.ns("front").spawn(f"tcpdump-{node}", "tcpdump", "-i", "br0", "-n", "-l", only_ours)
    deadline = time.monotonic() + 10
    while "listening on" not in watch.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    tools.inject(lab.ns("front"), "br0", [ptb_frame(4, _mac(lab, node), src="198.18.51.99")])
    time.sleep(0.5)
    watch.stop()
    m = re.search(r"(\d+) packets? captured", watch.output())
    assert m, watch.output()
    return int(m.group(1))


def test_dry_run_relays_nothing(servers: EcmpLab) -> None:
    servers.start_relay("n3")
    assert _broadcast_copies_of_one_error(servers, "n3") == 1  # what the watch sees
    proc = servers.start_relay("n3", "--dry-run")
    try:
        assert _broadcast_copies_of_one_error(servers, "n3") == 0
        assert counters(servers, "n3")["relayed"] >= 1  # counted, not sent
        assert "would relay fragmentation needed mtu 1400" in proc.output()
    finally:
        servers.start_relay("n3")


def test_unicast_to_peers(servers: EcmpLab) -> None:
    for i, node in enumerate(NODES):
        peers = [a for j, a in enumerate(A.nodes4) if j != i]
        servers.start_relay(node, *(arg for p in peers for arg in ("--peer", p)))
    try:
        results = downloads(servers, 4, 22000, BOUND)
        assert complete(results) == DOWNLOADS
        sent = [p["sent"] for n in NODES for p in servers.status(n)["peers"]]
        assert sum(sent) > 0 and all(p["mac"] for n in NODES for p in servers.status(n)["peers"])
        cmd = [sys.executable, "-m", "hopgate", "status", "-s", servers.socket_of("n1")]
        text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert "Peers" in text and "not sent (unresolved)" in text
        assert A.nodes4[1] in text and A.nodes4[2] in text, text
    finally:
        servers.start_relays()


def test_the_relays_state_in_status_and_metrics(servers: EcmpLab) -> None:
    servers.start_relay("n1")
    tools.inject(servers.ns("front"), "br0", [ptb_frame(4, _mac(servers, "n1"))])
    time.sleep(0.3)
    cmd = [sys.executable, "-m", "hopgate", "status", "-s", servers.socket_of("n1")]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "hopgate relay" in text and "PMTU messages" in text and "eth0" in text
    assert "filter: eBPF, checks and rate limits in the kernel" in text
    metrics = fetch(servers.socket_of("n1"), "/metrics").decode()
    assert 'hopgate_relay_seen_total{interface="eth0"}' in metrics
    assert 'hopgate_relay_relayed_total{interface="eth0"}' in metrics


# -- lab B: hopgate load balancers sharing a VIP ------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_cluster_every_download_through_the_vip_completes(cluster: EcmpLab, family: int) -> None:
    gw = cluster.gateway()
    before = {n: counters(cluster, n) for n in NODES}
    fast_before = {n: cluster.status(n)["dataplane"] for n in NODES}
    results = downloads(cluster, family, 23000 + family * 100, BOUND)
    failed = [d.run.output for d in results if not (d.ok and d.size == FILE_SIZE)]
    assert not failed, f"downloads through {gw}: {len(failed)} of {DOWNLOADS} failed: {failed[:3]}"
    after = {n: counters(cluster, n) for n in NODES}
    relayed = sum(after[n]["relayed"] - before[n]["relayed"] for n in NODES)
    copies = sum(after[n].get("relayed-copy", 0) - before[n].get("relayed-copy", 0) for n in NODES)
    # Each broadcast copy reaches the two other nodes; one that does not hold
    # the flow counts it and drops it; none is relayed again: no storm.
    assert relayed > 0 and copies <= 2 * relayed, (gw, relayed, copies, after)
    for n in NODES:
        assert cluster.status(n)["internal_errors"] == 0, cluster.gateway(n)
    if cluster.dataplane == "xdp":
        # The downloads' established flows were the programs' to forward (the
        # errors and the copies above came up to the pipelines through them).
        fast = {n: cluster.status(n)["dataplane"] for n in NODES}
        for n in NODES:
            assert fast[n]["mode"] == "xdp", f"{cluster.gateway(n)} runs without it: {fast[n]}"
            assert fast[n]["sync_errors"] == 0, f"{cluster.gateway(n)}: {fast[n]}"
        forwarded = sum(fast[n]["forwarded"] - fast_before[n]["forwarded"] for n in NODES)
        assert forwarded > 0, f"{gw}: the XDP programs forwarded nothing: {fast}"
    cmd = [sys.executable, "-m", "hopgate", "status", "-s", cluster.socket_of("n1")]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "PMTU relay (broadcast)" in text and "gw-f" in text, f"{cluster.gateway('n1')}: {text}"
    metrics = fetch(cluster.socket_of("n1"), "/metrics").decode()
    assert 'hopgate_relay_seen_total{interface="gw-f"}' in metrics, cluster.gateway("n1")


def test_cluster_without_the_relay_some_downloads_stall(cluster: EcmpLab) -> None:
    if cluster.dataplane == "xdp":
        # The control shows the lab's problem (the ECMP router's hashing),
        # which no data plane changes: once, on AF_PACKET, is enough.
        pytest.skip("the control runs on the AF_PACKET data plane only")
    cluster.start_hopgates(relay=False)
    try:
        results = downloads(cluster, 4, 24000, STALL_TIMEOUT)
        done = complete(results)
        # The errors all reach one node: its flows complete, the others' stall.
        assert 0 < done < DOWNLOADS, (
            f"{done} of {DOWNLOADS} downloads through {cluster.gateway()} without [relay]"
            " completed: the lab does not show the problem"
        )
    finally:
        cluster.start_hopgates(relay=True)
