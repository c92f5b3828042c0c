"""Second chance in a cluster of three hopgate load balancers behind a Linux ECMP
router (lab/ecmplab.py, kind="hopgate"): a download running through one node
goes on when the router's next hops change and its flow moves to another node
(a node drained and withdrawn, or stopped, or one added), because the node that
now gets the client's segments sends them to its peers and the node holding the
connection forwards them to the backend.  Without second chance the moved
segments open a new connection at the other node, which the backend resets.

On each data plane: the Python pipeline alone, and behind the XDP fast path,
where the connection is in the holder's program when it moves; the moved
segments reach the new node's pipeline through its program, and the peer's
copy the holder's pipeline through the holder's.

The client reads slowly on purpose (a small receive buffer, and a pause the
test ends), so that the connection is in mid-transfer when its route changes,
however loaded the machine is."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from hopgate.control.admin import fetch, fetch_conns
from hopgate.lab.ecmplab import ECMP_ADDR, FILE, FILE_SIZE, NODES, EcmpLab
from hopgate.lab.netns import Process

A = ECMP_ADDR
START = 30.0  # seconds for the client to connect and read its first bytes (a bound, not a measure)
FINISH = 90.0  # seconds for the rest once the route has changed (its own stall timeout: 20 s)
EXPECTED = hashlib.sha256(bytes(range(256)) * (FILE_SIZE // 256)).hexdigest()

# The client: GET the file, read its first 200 kB, say so with its port, wait
# for the go file, read the rest (a stall of 20 s is a failure), report.
CLIENT = r"""
import hashlib, os, socket, sys, time
host, go = sys.argv[1], sys.argv[2]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # a small window, no autotuning
s.settimeout(20)
s.connect((host, 80))
s.sendall(b"GET /FILE HTTP/1.0\r\nHost: vip\r\n\r\n")
got = bytearray()
while len(got) < 200_000:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
print("started", s.getsockname()[1], flush=True)
while not os.path.exists(go):
    time.sleep(0.05)
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
except OSError as e:
    print("failed", repr(e), flush=True)
    sys.exit(1)
body = bytes(got).partition(b"\r\n\r\n")[2]
print("done", len(body), hashlib.sha256(body).hexdigest(), flush=True)
""".replace("FILE", FILE)


@pytest.fixture(scope="module", params=["afpacket", "xdp"])
def cluster(request: pytest.FixtureRequest) -> Iterator[EcmpLab]:
    with EcmpLab("hopgate", dataplane=request.param) as lab:
        yield lab


def _wait_for(proc: Process, word: str | tuple[str, ...], within: float, what: str) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        lines = [line for line in proc.output().splitlines() if line.startswith(word)]
        if lines:
            return lines[0]
        if not proc.alive():
            break
        time.sleep(0.1)
    raise AssertionError(f"{what}; the client said:\n{proc.output()}")


def _holder(lab: EcmpLab, port: int) -> str:
    """The node whose connection table has the client's connection."""
    held = [n for n in NODES if fetch_conns(lab.socket_of(n), {"port": str(port)})["total"]]
    assert len(held) == 1, (
        f"the client's connection (port {port}) is held by {held or 'no node'} of {lab.gateway()}"
    )
    return held[0]


def _in_the_fast_path(lab: EcmpLab, node: str, port: int, within: float = 10.0) -> None:
    """Wait until ``node``'s XDP program holds the client's connection (handed
    over once established and assured): the move is then the fast path's
    problem, not only the pipeline's.  ``within`` is a bound, not a measure."""
    deadline = time.monotonic() + within
    while True:
        rows = fetch_conns(lab.socket_of(node), {"port": str(port)})["connections"]
        if any(r["fastpath"] for r in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any(r["fastpath"] for r in rows), (
        f"{lab.gateway(node)} did not hand the client's connection (port {port}) to its"
        f" XDP program: {rows}"
    )


def _second_chance(lab: EcmpLab, node: str) -> dict[str, int]:
    got = lab.status(node)["relay"]["second_chance"]
    assert got is not None, f"{lab.gateway(node)}: second chance is off"
    return dict(got)


def _moved_download(lab: EcmpLab, family: int, name: str) -> tuple[str, Process]:
    """A download through the VIP, paused in mid-transfer, whose node the ECMP
    router is then told to leave out: its flow moves to another node.  The
    node that held it, and the client (resumed: it reads the rest)."""
    go = lab.lab.dir / f"go-{name}"
    host = A.shared4 if family == 4 else A.shared6
    client = lab.ns("client").spawn(name, sys.executable, "-c", CLIENT, host, str(go))
    started = _wait_for(client, "started", START, "the download through the VIP did not start")
    port = int(started.split()[1])
    holder = _holder(lab, port)
    if lab.dataplane == "xdp":
        _in_the_fast_path(lab, holder, port)
    lab.route_shared_via(*(n for n in NODES if n != holder))
    go.touch()
    return holder, client


def _finish(client: Process) -> str:
    return _wait_for(client, ("done", "failed"), FINISH, "the download neither ended nor failed")


@pytest.mark.parametrize("family", [4, 6])
def test_a_download_goes_on_when_its_node_leaves_the_ecmp_route(
    cluster: EcmpLab, family: int
) -> None:
    cluster.peers, cluster.second_chance = True, None  # second chance: on with peers
    cluster.start_hopgates(relay=True)
    cluster.route_shared_via(*NODES)
    before = {n: _second_chance(cluster, n) for n in NODES}
    holder, client = _moved_download(cluster, family, f"moved{family}")
    try:
        end = _finish(client)
        gw = cluster.gateway(holder)
        assert end == f"done {FILE_SIZE} {EXPECTED}", (
            f"the download held by {gw} did not complete once its flow moved"
            f" to the other nodes: {end}"
        )
        after = {n: _second_chance(cluster, n) for n in NODES}
        sent = sum(after[n]["segments_sent"] - before[n]["segments_sent"] for n in NODES)
        held = after[holder]["copies_forwarded"] - before[holder]["copies_forwarded"]
        assert sent > 0 and held > 0, (
            f"{gw}: {held} copies forwarded; the others sent {sent}: {after}"
        )
        assert after[holder]["segments_sent"] == before[holder]["segments_sent"], (
            f"{gw}, out of the route, sent segments to its peers"
        )
        if cluster.dataplane == "xdp":  # the copies of the connection it holds
            fast = cluster.status(holder)["dataplane"]
            assert fast.get("copies_forwarded", 0) > 0, f"{gw}: its program forwarded none: {fast}"
        for n in NODES:
            assert cluster.status(n)["internal_errors"] == 0, cluster.gateway(n)
        text = fetch(cluster.socket_of(holder), "/metrics").decode()
        assert "hopgate_second_chance_copies_forwarded_total" in text, gw
        cmd = [sys.executable, "-m", "hopgate", "status", "-s", cluster.socket_of(holder)]
        shown = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert "Second chance" in shown, f"{gw}: {shown}"
    finally:
        client.stop()
        cluster.route_shared_via(*NODES)


def test_without_second_chance_the_moved_download_fails(cluster: EcmpLab) -> None:
    cluster.peers, cluster.second_chance = True, False
    cluster.start_hopgates(relay=True)
    cluster.route_shared_via(*NODES)
    holder, client = _moved_download(cluster, 4, "unchanced")
    try:
        end = _finish(client)
        assert end.startswith("failed"), (
            f"the download held by {cluster.gateway(holder)} completed after its flow moved,"
            f" without second chance: the lab does not show the problem ({end})"
        )
    finally:
        client.stop()
        cluster.route_shared_via(*NODES)
        cluster.second_chance = None
        cluster.start_hopgates(relay=True)
