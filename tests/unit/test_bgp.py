"""[bgp]: the configuration BIRD is given, its control socket, and what the
announcer announces as the services' health and the operator's drain change."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from hopgate.control import bgp
from hopgate.control.bgp import Announcer, BgpSpec, Bird, BirdControl, BirdError, Paths
from hopgate.control.config import ConfigError, parse
from hopgate.pipeline.router import Router
from tests.unit.lb_frames import VIP4, VIP6, lb_router, service, service6

CONFIG = """
[[interface]]
name = "gw-f"
addresses = ["198.18.52.11/24", "2001:2:0:52::11/64"]
host_addresses = ["198.18.52.111/24", "2001:2:0:52::111/64"]

[[interface]]
name = "gw-b"
addresses = ["198.18.53.1/24"]

[bgp]
asn = 65011
hold_time = 6
bfd = true
announce = ["198.18.61.0/24"]

[[bgp.neighbor]]
address = "198.18.52.1"
asn = 65000

[[bgp.neighbor]]
address = "2001:2:0:52::1"
asn = 65000
"""


def _spec(text: str = CONFIG) -> BgpSpec:
    spec = parse(text).bgp_spec()
    assert spec is not None
    return spec


def test_a_session_runs_from_the_host_address_and_points_at_hopgates_own() -> None:
    spec = _spec()
    assert spec.router_id == "198.18.52.111"  # the first IPv4 host address
    assert spec.keepalive_time == 2  # a third of the hold time
    v4, v6 = spec.neighbours
    assert (str(v4.local), str(v4.next_hop), v4.interface) == (
        "198.18.52.111",
        "198.18.52.11",
        "gw-f",
    )
    assert (str(v6.local), str(v6.next_hop)) == ("2001:2:0:52::111", "2001:2:0:52::11")
    assert spec.announce == (ipaddress.ip_network("198.18.61.0/24"),)


@pytest.mark.parametrize(
    ("edit", "where", "words"),
    [
        (('address = "198.18.52.1"', 'address = "198.18.53.9"'), "bgp.neighbor[0].address",
         "interface 'gw-b' has no host address"),
        (('address = "198.18.52.1"', 'address = "198.18.99.9"'), "bgp.neighbor[0].address",
         "no interface has a host address"),
        (('address = "2001:2:0:52::1"', 'address = "198.18.52.1"'), "bgp.neighbor[1].address",
         "is already bgp.neighbor[0]"),
        (("hold_time = 6", "hold_time = 6\nkeepalive_time = 6"), "bgp.keepalive_time",
         "not below hold_time"),
        (("hold_time = 6", 'hold_time = 6\nrouter_id = "2001:2::1"'), "bgp.router_id", "IPv4"),
        (("hold_time = 6", "hold_time = 2"), "bgp.hold_time", "greater than or equal to 3"),
        (('announce = ["198.18.61.0/24"]', 'announce = ["198.18.61.1/24"]'), "bgp.announce[0]",
         "host bits"),
    ],
)  # fmt: skip
def test_a_bgp_section_that_cannot_work_is_refused_with_its_key_path(
    edit: tuple[str, str], where: str, words: str
) -> None:
    with pytest.raises(ConfigError) as e:
        parse(CONFIG.replace(*edit))
    found = [i for i in e.value.issues if i.path == where]
    assert found, f"no issue at {where}: {e.value.issues}"
    assert words in found[0].message, found[0].message


def test_without_an_ipv4_host_address_the_router_id_must_be_given() -> None:
    text = CONFIG.replace('"198.18.52.111/24", ', "").replace(
        'address = "198.18.52.1"\nasn = 65000\n\n[[bgp.neighbor]]\n', ""
    )
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert [i.path for i in e.value.issues] == ["bgp.router_id"]
    assert _spec(text.replace("hold_time = 6", 'hold_time = 6\nrouter_id = "198.18.52.11"'))


@pytest.mark.skipif(shutil.which("bird") is None, reason="BIRD 2 is not installed")
def test_bird_accepts_the_configuration_hopgate_writes(tmp_path: Path) -> None:
    b = Bird(_spec(), Paths(tmp_path / "x.bird"))
    b.write_config()  # runs bird -p: raises with BIRD's reason if it refuses
    text = b.paths.config.read_text()
    assert "next hop address 198.18.52.11;" in text
    assert "next hop address 2001:2:0:52::11;" in text
    assert "bfd on;" in text and "protocol bfd" in text
    assert "hold time 6;" in text and "keepalive time 2;" in text
    # A configuration BIRD refuses is not started with (its reason is told).
    broken = Bird(_spec().__class__(**{**_spec().__dict__, "router_id": "not-an-id"}), b.paths)
    with pytest.raises(BirdError, match="BIRD refuses"):
        broken.write_config()


# -- the control socket --------------------------------------------------------------------


def _fake_bird(path: Path, answers: dict[str, bytes]) -> list[str]:
    """A control socket that answers each command from ``answers``."""
    asked: list[str] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                f = conn.makefile("rwb")
                f.write(b"0001 BIRD 2.0.12 ready.\n")
                f.flush()
                command = f.readline().decode().strip()
                asked.append(command)
                f.write(answers[command])
                f.flush()

    threading.Thread(target=serve, daemon=True).start()
    return asked


# BIRD pads its columns, and ends a protocol's details with a line of one space.
PROTOCOLS = "".join(
    line + "\n"
    for line in (
        "2002-Name       Proto      Table      State  Since         Info",
        "1002-device1    Device     ---        up     10:35:47.852  ",
        "1002-peer1      BGP        ---        up     10:35:56.510  Established   ",
        "1006-  BGP state:          Established",
        "     Neighbor address: 198.18.52.1",
        "   Channel ipv4",
        "     State:          UP",
        "     Routes:         0 imported, 2 exported, 0 preferred",
        "1002-peer2      BGP        ---        start  10:36:13.932  Active        Socket: "
        "Connection refused",
        "1006-  BGP state:          Active",
        "     Last error:       Socket: Connection refused",
        " ",
        "0000 ",
    )
).encode()


def test_the_control_socket_is_read_as_birdc_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "bird.ctl"
    asked = _fake_bird(
        path,
        {
            "show protocols all": PROTOCOLS,
            "configure": b"0002-Reading configuration from /x\n0003 Reconfigured\n",
            "bogus": b"9001 syntax error, unexpected CF_SYM_UNDEFINED\n",
        },
    )
    control = BirdControl(path)
    found = bgp.parse_protocols(control.request("show protocols all"))
    assert found["peer1"].established and found["peer1"].exported == 2
    assert not found["peer2"].established
    assert (found["peer2"].bgp_state, found["peer2"].last_error) == (
        "Active",
        "Socket: Connection refused",
    )
    assert control.request("configure").code == 3
    with pytest.raises(BirdError, match="syntax error"):
        control.request("bogus")
    assert asked == ["show protocols all", "configure", "bogus"]
    with pytest.raises(BirdError, match="control socket"):
        BirdControl(tmp_path / "nobody.ctl").request("show status")


# -- the announcer --------------------------------------------------------------------------


class FakeBird(Bird):
    """BIRD's files written as for the real one; no process, no socket."""

    def __init__(self, spec: BgpSpec, paths: Paths) -> None:
        super().__init__(spec, paths)
        self.configures = 0
        self.running = False

    def start(self) -> None:
        self.paths.dir.mkdir(parents=True, exist_ok=True)
        self.running = True

    def alive(self) -> bool:
        return self.running

    def stop(self) -> None:
        self.running = False

    def configure(self) -> None:
        self.configures += 1

    def sessions(self) -> dict[str, bgp.Session]:
        return {"peer1": bgp.Session("peer1", "up", "10:00", "Established", "Established", 1)}


def _now(fn: Callable[[], Any]) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_result(fn())
    return f


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _announcer(
    tmp_path: Path, router: Router, clock: Clock | None = None, ended: list[int] | None = None
) -> tuple[Announcer, FakeBird]:
    fake = FakeBird(_spec(), Paths(tmp_path / "hopgate.bird"))

    def end() -> int:
        if ended is not None:
            ended.append(1)
        return 7

    a = Announcer(fake, lambda: router, _now, end, clock or Clock())
    return a, fake


def _routes(fake: FakeBird) -> str:
    files = (fake.paths.routes(4), fake.paths.routes(6))
    return "".join(f.read_text() for f in files if f.exists())


def test_a_vip_is_announced_while_its_service_has_backends_up(tmp_path: Path) -> None:
    r = lb_router(service(), service6())
    a, fake = _announcer(tmp_path, r)
    a.step()
    assert _routes(fake) == (
        f"route 198.18.61.0/24 blackhole;\nroute {VIP4}/32 blackhole;\n"
        f"route {VIP6}/128 blackhole;\n"
    )
    assert fake.configures == 1
    a.step()  # nothing changed: BIRD is not asked again
    assert fake.configures == 1
    v4 = next(s for s in r.nat.services.all if s.family == 4)  # type: ignore[union-attr]
    v4.backends[0].up = False
    a.step()
    assert f"{VIP4}/32" in _routes(fake), "one backend of two is still up"
    v4.backends[1].up = False
    a.step()
    assert f"{VIP4}/32" not in _routes(fake)
    assert f"{VIP6}/128" in _routes(fake)
    vip = next(v for v in a.snapshot()["vips"] if v["prefix"] == f"{VIP4}/32")
    assert vip["announced"] is False and "no service has 1" in vip["why"]
    assert vip["services"] == [{"name": "web", "backends_up": 0, "backends": 2}]
    v4.backends[1].up = True
    a.step()
    assert f"{VIP4}/32" in _routes(fake)


def test_min_backends_up_counts_the_backends_of_one_service(tmp_path: Path) -> None:
    r = lb_router(service())
    fake = FakeBird(
        BgpSpec(**{**_spec().__dict__, "min_backends_up": 2, "announce": ()}),
        Paths(tmp_path / "b"),
    )
    a = Announcer(fake, lambda: r, _now)
    a.step()
    assert _routes(fake) == f"route {VIP4}/32 blackhole;\n"
    r.nat.services.all[0].backends[0].up = False  # type: ignore[union-attr]
    a.step()
    assert _routes(fake) == ""


def test_a_drain_withdraws_everything_and_outlives_a_restart(tmp_path: Path) -> None:
    r = lb_router(service())
    clock = Clock()
    ended: list[int] = []
    a, fake = _announcer(tmp_path, r, clock, ended)
    a.step()
    assert f"{VIP4}/32" in _routes(fake)
    state = a.drain(timeout=30)
    assert state["drained"] and state["drain"]["timeout"] == 30
    a.step()
    assert _routes(fake) == "", "a drained node announces nothing, configured prefixes included"
    assert a.snapshot()["vips"][0]["why"] == "the node is drained"
    clock.t += 29
    a.step()
    assert ended == []
    clock.t += 1
    a.step()
    assert ended == [1], "the connections left are ended at the timeout"
    assert a.snapshot()["drain"]["ended"]
    a.step()
    assert ended == [1], "once"

    # A new hopgate on the same files comes back drained.
    again, fake2 = _announcer(tmp_path, r)
    again.step()
    assert _routes(fake2) == "" and again.snapshot()["drained"]
    again.undrain()
    again.step()
    assert f"{VIP4}/32" in _routes(fake2)
    assert not fake2.paths.drained.exists()
    third, fake3 = _announcer(tmp_path, r)
    third.step()
    assert f"{VIP4}/32" in _routes(fake3)


def test_the_sessions_are_shown_with_the_neighbours_they_are_with(tmp_path: Path) -> None:
    a, _ = _announcer(tmp_path, lb_router(service()))
    a.read_sessions()
    s = a.snapshot()["sessions"]
    assert [(x["neighbor"], x["established"], x["exported"]) for x in s] == [
        ("198.18.52.1", True, 1),
        ("2001:2:0:52::1", False, 0),
    ]
    assert s[1]["state"] == "unknown"


def test_a_bird_that_died_is_started_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bgp, "RESTART_BACKOFF", (0.01, 0.02))
    monkeypatch.setattr(bgp, "POLL", 0.01)
    a, fake = _announcer(tmp_path, lb_router(service()))
    a.start()
    try:
        fake.running = False  # BIRD died
        for _ in range(500):
            if a.snapshot()["restarts"] >= 1 and fake.running:
                break
            threading.Event().wait(0.01)
        assert a.snapshot()["restarts"] >= 1 and fake.running
    finally:
        a.stop()
    assert not fake.running


def test_a_drain_without_bgp_is_refused_with_the_reason(tmp_path: Path) -> None:
    from hopgate.control.admin import AdminRefusedError, AdminServer, drain
    from hopgate.daemon import _bgp_actions

    sock = str(tmp_path / "a.sock")
    server = AdminServer(sock, lambda: _now(dict), actions=_bgp_actions(None))
    server.start()
    try:
        with pytest.raises(AdminRefusedError) as e:
            drain(sock)
        assert e.value.status == 404 and "no [bgp]" in e.value.reason
    finally:
        server.stop()


def test_a_drain_request_is_checked(tmp_path: Path) -> None:
    from hopgate.control.admin import AdminRefusedError, AdminServer, drain, undrain
    from hopgate.daemon import _bgp_actions

    a, _ = _announcer(tmp_path, lb_router(service()))
    sock = str(tmp_path / "a.sock")
    server = AdminServer(sock, lambda: _now(dict), actions=_bgp_actions(a))
    server.start()
    try:
        assert drain(sock, 5)["drain"]["timeout"] == 5
        assert undrain(sock)["drained"] is False
        with pytest.raises(AdminRefusedError) as e:
            drain(sock, -1)
        assert e.value.status == 400 and "timeout" in e.value.reason
    finally:
        server.stop()


def test_bird_is_found_or_named(tmp_path: Path) -> None:
    b = Bird(BgpSpec(**{**_spec().__dict__, "bird": "no-such-bird"}), Paths(tmp_path))
    with pytest.raises(BirdError, match="bird2"):
        b.binary()


@pytest.mark.skipif(shutil.which("bird") is None, reason="BIRD 2 is not installed")
def test_a_leftover_bird_on_the_same_files_is_stopped(tmp_path: Path) -> None:
    spec = BgpSpec(**{**_spec().__dict__, "neighbours": (), "bfd": False})
    paths = Paths(tmp_path / "h.bird")
    b = Bird(spec, paths)
    b.write_config()
    proc = subprocess.Popen(
        [b.binary(), "-f", "-c", str(paths.config), "-s", str(paths.control), "-P", str(paths.pid)]
    )
    try:
        for _ in range(200):
            if paths.pid.exists() and paths.pid.read_text().strip():
                break
            threading.Event().wait(0.02)
        bgp.end_leftover(paths)
        assert proc.wait(5) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_state_is_read_while_bird_is_busy(tmp_path: Path) -> None:
    """The loop's snapshot takes the announcer's state: it never waits for BIRD."""
    r = lb_router(service())
    release = threading.Event()

    class SlowBird(FakeBird):
        def configure(self) -> None:
            release.wait(30)  # BIRD takes its time to answer

    slow = SlowBird(_spec(), Paths(tmp_path / "slow.bird"))
    a = Announcer(slow, lambda: r, _now)
    stepping = threading.Thread(target=a.step)
    stepping.start()
    try:
        read: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: read.append(a.snapshot()))
        reader.start()
        reader.join(10)
        assert read, "the snapshot waited for BIRD"
        assert stepping.is_alive(), "BIRD was not busy while the state was read"
    finally:
        release.set()
        stepping.join(10)
    assert a.snapshot()["configures"] == 1


def test_adding_or_removing_bgp_takes_a_restart_and_a_change_does_not() -> None:
    from hopgate.control.reload import describe, restart_only

    with_bgp = parse(CONFIG)
    without = parse(CONFIG[: CONFIG.index("[bgp]")])
    for old, new, word in ((without, with_bgp, "added"), (with_bgp, without, "removed")):
        issues = restart_only(old, new)
        assert [i.path for i in issues] == ["bgp"], issues
        assert word in issues[0].message and "restart" in issues[0].message
    changed = parse(CONFIG.replace("hold_time = 6", "hold_time = 12"))
    assert restart_only(with_bgp, changed) == []
    assert describe(with_bgp, changed) == ["bgp.hold_time: 6 -> 12"]


def test_a_reload_gives_bird_its_new_configuration(tmp_path: Path) -> None:
    r = lb_router(service())
    a, fake = _announcer(tmp_path, r)
    seen: list[BgpSpec] = []
    fake.reconfigure = seen.append  # type: ignore[method-assign,assignment]
    a.reconfigure(_spec())
    assert seen == [], "the same [bgp]: BIRD is left alone"
    new = BgpSpec(**{**_spec().__dict__, "hold_time": 30})
    a.reconfigure(new)
    assert seen == [new]
