"""Restarts that lose no connection (issue 12), judged as a user would: 10 MB
downloads at 1 MB/s through hopgate, which is stopped in the middle and started
again.  A stop (SIGTERM) writes the connections to the state file; a crash
(SIGKILL) leaves the last checkpoint (every second here); the new hopgate reads
them back.  Every download must complete, byte for byte."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from hopgate.lab import udpstream
from hopgate.lab.lblab import LB_ADDR, LbLab
from hopgate.lab.netns import LabError, Namespace, Process
from hopgate.lab.topologies import BIG_FILE, HTTP_PORT, NAT_ADDR, NatLab, start_hopgate

pytestmark = pytest.mark.lab

CHECKPOINTS = "[state]\ncheckpoint_interval = 1.0\n"
SIZE = 10 * 1024 * 1024
RATE = 1024 * 1024  # bytes a second: the download takes about 10 s


def _download(ns: Namespace, host: str, port: int, name: str) -> Process:
    """The big file at RATE, paced by the reader with a small receive buffer
    (``hopgate.lab.clients download``), so that it crosses hopgate all along:
    curl's ``--limit-rate`` lets the server fill the client's buffers, and the
    file may be through before the restart.  Prints ``STATUS BYTES SECONDS``."""
    return ns.spawn(
        name, sys.executable, "-m", "hopgate.lab.clients", "download", host, str(port),
        f"/{BIG_FILE}", "--rate", str(RATE), "--timeout", "15",
    )  # fmt: skip


def _finished(proc: Process, timeout: float = 70.0) -> str:
    """What the download printed, as ``STATUS BYTES`` (its time left out)."""
    deadline = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    return " ".join(proc.output().split()[:2])


@contextmanager
def _restarted(lab: NatLab | LbLab, how: str) -> Iterator[None]:
    """Let the downloads run 4 s, stop hopgate (``how``: "stop", SIGTERM; or
    "crash", SIGKILL), start it again; then the body checks."""
    time.sleep(4.0)
    old = lab.hopgate
    assert old is not None
    if how == "crash":
        os.killpg(old.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while old.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        old.stop(timeout=10.0)
    assert not old.alive(), f"{lab.gateway} did not end on {how}"
    try:
        lab.hopgate = start_hopgate(lab.ns("gw"), lab.config_path, lab.admin_socket)
    except LabError as e:
        pytest.fail(f"{lab.gateway} did not start again after {how}: {e}")
    yield


def _restored(lab: NatLab | LbLab) -> str:
    """What the new hopgate logged of the connections it read back."""
    assert lab.hopgate is not None
    return next(
        (line for line in lab.hopgate.output().splitlines() if "state: connections" in line),
        "(nothing restored)",
    )


@pytest.mark.parametrize("dataplane", ["afpacket", "xdp"])
@pytest.mark.parametrize("how", ["stop", "crash"])
def test_downloads_through_the_nat_and_a_published_port_survive_a_restart(
    dataplane: str, how: str
) -> None:
    a = NAT_ADDR
    with NatLab("hopgate", extra_config=CHECKPOINTS, dataplane=dataplane) as lab:
        # A big file on the inside host too, reached from outside by DNAT.
        (lab.lab.dir / "www-inside" / BIG_FILE).write_bytes(bytes(range(256)) * (SIZE // 256))
        out = _download(lab.ns("inside2"), a.server4, HTTP_PORT, "out")
        into = _download(lab.ns("server"), a.gw_u4, a.published_port, "in")
        with _restarted(lab, how):
            for name, proc in (("through the NAT", out), ("to the published port", into)):
                got = _finished(proc)
                assert got == f"200 {SIZE}", (
                    f"{lab.gateway}: the download {name} broke across a {how}: {got!r};"
                    f" {_restored(lab)}"
                )


@pytest.mark.parametrize("dataplane", ["afpacket", "xdp"])
@pytest.mark.parametrize("how", ["stop", "crash"])
def test_a_download_through_a_service_survives_a_restart(dataplane: str, how: str) -> None:
    with LbLab(extra_config=CHECKPOINTS, dataplane=dataplane) as lab:
        proc = _download(lab.ns("client"), LB_ADDR.vip4, HTTP_PORT, "download")
        with _restarted(lab, how):
            got = _finished(proc)
            assert got == f"200 {SIZE}", (
                f"{lab.gateway}: the download through the service broke across a {how}:"
                f" {got!r}; {_restored(lab)}"
            )


@pytest.mark.parametrize("how", ["stop", "crash"])
def test_the_fast_path_forwards_while_hopgate_is_down(how: str) -> None:
    """With the XDP fast path, the program hopgate leaves attached goes on
    forwarding the established connections while no hopgate runs (``[dataplane]
    handover``), and the next hopgate takes them over.  Judged by a UDP stream
    through the NAT, 1,000 datagrams a second, each stamped by the receiving
    kernel: during the seconds hopgate is down, they keep arriving."""
    a = NAT_ADDR
    with NatLab("hopgate", extra_config=CHECKPOINTS, dataplane="xdp") as lab:
        record = lab.lab.dir / "stream.bin"
        recv = lab.ns("server").spawn(
            "recv", sys.executable, "-m", "hopgate.lab.udpstream", "recv", "--port", "9999",
            "--out", str(record), "--reply",
        )  # fmt: skip
        send = lab.ns("inside2").spawn(
            "send", sys.executable, "-m", "hopgate.lab.udpstream", "send", "--to", a.server4,
            "--port", "9999", "--rate", "1000",
        )  # fmt: skip
        time.sleep(4.0)  # a stream after 2 s of replied traffic: the program's
        old = lab.hopgate
        assert old is not None
        if how == "crash":
            os.killpg(old.pid, signal.SIGKILL)
        else:
            old.stop(timeout=10.0)
        deadline = time.monotonic() + 5
        while old.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not old.alive(), f"{lab.gateway} did not end on {how}"
        down = time.time_ns()
        time.sleep(2.5)
        lab.hopgate = start_hopgate(lab.ns("gw"), lab.config_path, lab.admin_socket)
        up = time.time_ns()
        time.sleep(1.5)
        send.stop(timeout=5.0)
        recv.stop(timeout=5.0)
        _, received, _ = udpstream.read(record)
        while_down = sum(1 for t in received if down + 200_000_000 <= t <= up)
        expected = (up - down - 200_000_000) / 1e6  # 1,000 a second
        assert while_down > 0.8 * expected, (
            f"{lab.gateway}'s fast path forwarded {while_down} of the ~{expected:.0f} datagrams"
            f" sent while hopgate was down after a {how}"
        )
        after = sum(1 for t in received if t > up + 500_000_000)
        assert after > 500, f"{lab.gateway}: the stream did not go on after the restart ({after})"
        assert "fast path: taken over" in lab.hopgate.output(), (
            f"{lab.gateway} did not take the fast path over:\n{lab.hopgate.output()[-2000:]}"
        )


def test_sighup_and_sigusr1_do_not_stop_hopgate_and_sigusr1_checkpoints() -> None:
    """SIGHUP would kill a daemon that does not handle it; hopgate reloads its
    file (unchanged here: nothing changes).  SIGUSR1 writes a checkpoint at once."""
    with NatLab("hopgate", extra_config="[state]\ncheckpoint_interval = 0.0\n") as lab:
        assert lab.hopgate is not None
        state = lab.lab.dir / "hopgate.state"
        assert not state.exists()
        for sig in (signal.SIGHUP, signal.SIGUSR1):
            os.kill(lab.hopgate.pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
            state.exists() and "reload (SIGHUP): nothing changed" in lab.hopgate.output()
        ):
            time.sleep(0.05)
        assert lab.hopgate.alive(), f"{lab.gateway} died of SIGHUP or SIGUSR1"
        assert state.exists(), f"{lab.gateway} wrote no checkpoint on SIGUSR1"
        assert state.read_bytes().startswith(b'{"hopgate_state": 1'), lab.gateway
        assert "reload (SIGHUP): nothing changed" in lab.hopgate.output(), (
            f"{lab.gateway} did not reload on SIGHUP:\n{lab.hopgate.output()[-2000:]}"
        )


def test_a_drained_backend_stays_drained_across_a_restart() -> None:
    """What the operator made of a backend (``hopgate backend``) is written with
    the connections, and the new hopgate's services start with it."""
    import subprocess
    import sys

    with LbLab() as lab:
        be = LB_ADDR.backends4[0]
        cmd = [sys.executable, "-m", "hopgate", "backend", "-s", lab.admin_socket, "web", be]
        subprocess.run([*cmd, "drain"], check=True, capture_output=True, timeout=30)
        with _restarted(lab, "stop"):
            rows = [b for name, b in lab.backends("web").items() if name.startswith(f"{be}:")]
            assert rows and rows[0]["admin"] == "drained", (
                f"{lab.gateway} forgot across a restart that {be} was drained: {rows}"
            )
