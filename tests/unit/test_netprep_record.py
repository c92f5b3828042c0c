"""The interface records of netprep: written before hopgate changes an interface,
taken as the originals after a crash, replaced when stale or unreadable, removed
when the interface is given back.  A stand-in for the kernel (``FakeHost``) and a
temporary directory in place of /run/hopgate/interfaces."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from hopgate.io import netprep
from hopgate.io.netprep import (
    Link,
    Netns,
    Record,
    RecordError,
    give_back,
    read_record,
    record_path,
    take_link,
)

NETNS = Netns(inode=4026532000, cookie=77)
LINK = Link("gw-c", 5, b"\x02\x00\x00\x00\x00\x01", 1500, "veth")
# A fresh veth: what the kernel gives it.
DEFAULTS = {
    "net/ipv6/conf/gw-c/disable_ipv6": "0",
    "net/ipv4/conf/gw-c/arp_ignore": "0",
    "net/ipv4/conf/gw-c/forwarding": "1",
    "net/ipv4/conf/gw-c/rp_filter": "2",
}
HOPGATES = {
    "net/ipv6/conf/gw-c/disable_ipv6": "1",
    "net/ipv4/conf/gw-c/arp_ignore": "8",
    "net/ipv4/conf/gw-c/forwarding": "0",
    "net/ipv4/conf/gw-c/rp_filter": "1",
}


class FakeHost:
    """The kernel as netprep sees it: sysctls, offloads, links.  ``before_change``
    is called before every change (the tests check the record there)."""

    def __init__(self, record: Path | None = None) -> None:
        self.sysctls = dict(DEFAULTS)
        self.features = {"gw-c": {"rx-gro": True, "rx-gro-list": False}}
        self.links: dict[int, list[object]] = {5: ["gw-c", False]}
        self.changes: list[tuple[object, ...]] = []
        self.record = record
        self.records_seen: list[Record | None] = []
        self.fail_up = False

    def _changing(self, *what: object) -> None:
        if self.record is not None:
            self.records_seen.append(read_record(self.record))
        self.changes.append(what)

    def sysctl(self, path: str) -> str | None:
        return self.sysctls.get(path)

    def set_sysctl(self, path: str, value: str) -> None:
        self._changing("sysctl", path, value)
        if path not in self.sysctls:
            raise FileNotFoundError(path)
        self.sysctls[path] = value

    def offloads(self, name: str) -> dict[str, bool]:
        return dict(self.features.get(name, {}))

    def set_offloads(self, name: str, on: dict[str, bool]) -> None:
        self._changing("offloads", name, on)
        self.features[name].update(on)

    def link(self, index: int) -> tuple[str, bool] | None:
        state = self.links.get(index)
        return None if state is None else (str(state[0]), bool(state[1]))

    def set_up(self, index: int, up: bool) -> None:
        self._changing("up", index, up)
        if self.fail_up:
            raise OSError("no such device")
        self.links[index][1] = up


def original(**changes: object) -> Record:
    """The record of LINK as the kernel gave it (DEFAULTS)."""
    record = Record(
        netns=NETNS.inode,
        netns_cookie=NETNS.cookie,
        name="gw-c",
        ifindex=5,
        up=False,
        sysctls={
            "ipv6.disable_ipv6": "0",
            "ipv4.arp_ignore": "0",
            "ipv4.forwarding": "1",
            "ipv4.rp_filter": "2",
        },
        offloads={"rx-gro": True, "rx-gro-list": False},
        pid=os.getpid(),
        pid_start=netprep._start_time(os.getpid()),
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def crashed(host: FakeHost) -> None:
    """The interface as a hopgate left it when it was killed."""
    host.sysctls.update(HOPGATES)
    host.features["gw-c"]["rx-gro"] = False
    host.links[5][1] = True


def test_the_record_is_on_disk_before_the_first_change(tmp_path: Path) -> None:
    path = record_path(tmp_path, NETNS, "gw-c")
    assert path == tmp_path / "4026532000-gw-c.json"
    host = FakeHost(record=path)
    held = take_link(host, LINK, tmp_path, NETNS)

    assert host.changes, "nothing was changed"
    assert host.records_seen[0] == original(), "the first change came before the record"
    assert all(r == original() for r in host.records_seen)
    assert held.originals == original() and held.owner
    assert host.sysctls == HOPGATES
    assert host.features["gw-c"] == {"rx-gro": False, "rx-gro-list": False}
    assert host.links[5] == ["gw-c", True]
    assert read_record(path) == original()
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "a temporary file stayed"


def test_a_clean_release_gives_back_and_removes_the_record(tmp_path: Path) -> None:
    host = FakeHost()
    held = take_link(host, LINK, tmp_path, NETNS)
    give_back(host, held)
    assert host.sysctls == DEFAULTS
    assert host.features["gw-c"] == {"rx-gro": True, "rx-gro-list": False}
    assert host.links[5] == ["gw-c", False]
    assert not held.path.exists()
    assert list(tmp_path.iterdir()) == []


def test_only_what_hopgate_changed_is_written_back(tmp_path: Path) -> None:
    host = FakeHost()
    host.sysctls["net/ipv4/conf/gw-c/rp_filter"] = "1"  # hopgate's value already
    held = take_link(host, LINK, tmp_path, NETNS)
    host.sysctls["net/ipv4/conf/gw-c/rp_filter"] = "0"  # an operator's, while it ran
    host.changes.clear()
    give_back(host, held)
    assert host.sysctls["net/ipv4/conf/gw-c/rp_filter"] == "0"
    assert ("sysctl", "net/ipv4/conf/gw-c/rp_filter", "1") not in host.changes


def test_after_a_crash_the_record_is_the_originals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = record_path(tmp_path, NETNS, "gw-c")
    host = FakeHost()
    take_link(host, LINK, tmp_path, NETNS)  # and killed: nothing given back
    path.write_text(replace(original(), pid=dead_pid(), pid_start=12345).to_json())
    assert host.sysctls == HOPGATES

    with caplog.at_level(logging.WARNING, logger="hopgate.io.netprep"):
        held = take_link(host, LINK, tmp_path, NETNS)
    assert held.originals == original(), "the crashed hopgate's settings became the originals"
    warning = caplog.text
    assert "gw-c: hopgate (pid " in warning and "did not give it back" in warning, warning
    assert "disable_ipv6=0 arp_ignore=0 forwarding=1 rp_filter=2" in warning, warning
    assert "disable_ipv6=1 arp_ignore=8 forwarding=0 rp_filter=1" in warning, warning
    # the record is now this hopgate's, with the same originals
    assert read_record(path) == original()

    give_back(host, held)
    assert host.sysctls == DEFAULTS
    assert host.features["gw-c"]["rx-gro"] is True
    assert host.links[5] == ["gw-c", False]
    assert not path.exists()


def test_a_second_crash_keeps_the_first_originals(tmp_path: Path) -> None:
    host = FakeHost()
    path = record_path(tmp_path, NETNS, "gw-c")
    for _ in range(3):
        take_link(host, LINK, tmp_path, NETNS)
        path.write_text(replace(read_record(path) or original(), pid=dead_pid()).to_json())
    held = take_link(host, LINK, tmp_path, NETNS)
    give_back(host, held)
    assert host.sysctls == DEFAULTS


def test_a_record_for_another_ifindex_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The interface was deleted and re-created while no hopgate ran: the old
    link's record is not this one's."""
    path = record_path(tmp_path, NETNS, "gw-c")
    path.write_text(original(ifindex=3, sysctls={"ipv4.arp_ignore": "2"}, pid=1).to_json())
    host = FakeHost()
    with caplog.at_level(logging.INFO, logger="hopgate.io.netprep"):
        held = take_link(host, LINK, tmp_path, NETNS)
    assert held.originals == original()
    assert read_record(path) == original()
    assert "is for ifindex 3, gone (this one is 5): replaced" in caplog.text
    give_back(host, held)
    assert host.sysctls == DEFAULTS


def test_a_record_for_an_ifindex_renamed_since_is_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = record_path(tmp_path, NETNS, "gw-c")
    path.write_text(original(ifindex=3, pid=1).to_json())
    host = FakeHost()
    host.links[3] = ["old-c", True]
    with caplog.at_level(logging.WARNING, logger="hopgate.io.netprep"):
        held = take_link(host, LINK, tmp_path, NETNS)
    assert held.originals == original()
    assert "is for ifindex 3, now old-c, which hopgate left changed" in caplog.text


def test_a_record_of_a_namespace_that_is_gone_is_replaced(tmp_path: Path) -> None:
    """The same inode, another cookie: a namespace deleted after a crash, its
    inode now this one's."""
    path = record_path(tmp_path, NETNS, "gw-c")
    path.write_text(original(netns_cookie=3, pid=1, sysctls={"ipv4.arp_ignore": "2"}).to_json())
    host = FakeHost()
    held = take_link(host, LINK, tmp_path, NETNS)
    assert held.originals == original()
    # without cookies (an older kernel), the inode and the ifindex decide
    path.write_text(replace(original(netns_cookie=None), pid=dead_pid()).to_json())
    held = take_link(host, LINK, tmp_path, Netns(NETNS.inode, None))
    assert held.originals == original(netns_cookie=None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        "\xff",  # not UTF-8
        json.dumps({**json.loads(original().to_json()), "version": 2}),
        json.dumps({k: v for k, v in json.loads(original().to_json()).items() if k != "up"}),
        json.dumps({**json.loads(original().to_json()), "ifindex": True}),
        json.dumps({**json.loads(original().to_json()), "ifindex": "5"}),
        json.dumps({**json.loads(original().to_json()), "sysctls": {"../../kernel/x": "1"}}),
        json.dumps({**json.loads(original().to_json()), "sysctls": {"ipv4.arp_ignore": "0\n1"}}),
        json.dumps({**json.loads(original().to_json()), "offloads": {"rx-gro": "on"}}),
        json.dumps({**json.loads(original().to_json()), "name": "a/b"}),
    ],
    ids=[
        "empty",
        "cut-short",
        "not-an-object",
        "not-utf8",
        "other-version",
        "field-missing",
        "bool-for-int",
        "str-for-int",
        "unknown-sysctl",
        "not-a-number",
        "offload-not-bool",
        "bad-name",
    ],
)
def test_an_unreadable_record_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    path = record_path(tmp_path, NETNS, "gw-c")
    path.write_bytes(text.encode("latin-1"))
    host = FakeHost()
    crashed(host)  # whatever it says, it is not used: what the link has now is
    with caplog.at_level(logging.WARNING, logger="hopgate.io.netprep"):
        held = take_link(host, LINK, tmp_path, NETNS)
    assert f"{path}: ignoring it, unreadable (" in caplog.text
    assert held.originals.sysctls["ipv4.arp_ignore"] == "8"
    assert read_record(path) == held.originals, "the unreadable record was not replaced"


def test_a_record_whose_interface_is_gone_is_removed(tmp_path: Path) -> None:
    host = FakeHost()
    held = take_link(host, LINK, tmp_path, NETNS)
    del host.links[5]
    host.changes.clear()
    give_back(host, held)
    assert not held.path.exists()
    assert host.changes == []


def test_a_renamed_interface_is_given_back_under_its_new_name(tmp_path: Path) -> None:
    host = FakeHost()
    held = take_link(host, LINK, tmp_path, NETNS)
    host.links[5][0] = "gw-x"
    host.sysctls = {p.replace("gw-c", "gw-x"): v for p, v in host.sysctls.items()}
    host.features["gw-x"] = host.features.pop("gw-c")
    give_back(host, held)
    assert host.sysctls == {p.replace("gw-c", "gw-x"): v for p, v in DEFAULTS.items()}
    assert host.features["gw-x"]["rx-gro"] is True


def test_an_interface_held_by_a_running_hopgate_is_left_to_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A second daemon on the same interfaces (refused later, for its admin
    socket) neither gives them back nor removes the first one's record."""
    path = record_path(tmp_path, NETNS, "gw-c")
    parent = os.getppid()
    first = original(pid=parent, pid_start=netprep._start_time(parent))
    path.write_text(first.to_json())
    host = FakeHost()
    crashed(host)
    with caplog.at_level(logging.WARNING, logger="hopgate.io.netprep"):
        held = take_link(host, LINK, tmp_path, NETNS)
    assert not held.owner
    assert f"gw-c: held by another hopgate (pid {parent}" in caplog.text
    give_back(host, held)
    assert host.sysctls == HOPGATES
    assert read_record(path) == first


def test_a_reused_pid_is_not_the_hopgate_that_wrote_the_record(tmp_path: Path) -> None:
    path = record_path(tmp_path, NETNS, "gw-c")
    parent = os.getppid()
    path.write_text(original(pid=parent, pid_start=1).to_json())  # started at another time
    host = FakeHost()
    crashed(host)
    held = take_link(host, LINK, tmp_path, NETNS)
    assert held.owner and held.originals == original()


def test_a_change_that_fails_gives_back_what_changed(tmp_path: Path) -> None:
    host = FakeHost()
    host.fail_up = True
    with pytest.raises(OSError, match="no such device"):
        take_link(host, LINK, tmp_path, NETNS)
    assert host.sysctls == DEFAULTS
    assert host.features["gw-c"]["rx-gro"] is True
    assert list(tmp_path.iterdir()) == []


def test_without_a_place_for_records_the_interface_is_still_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    host = FakeHost()
    with caplog.at_level(logging.WARNING, logger="hopgate.io.netprep"):
        held = take_link(host, LINK, not_a_dir, NETNS)
    assert "gw-c: cannot record its settings in" in caplog.text
    assert host.sysctls == HOPGATES
    give_back(host, held)
    assert host.sysctls == DEFAULTS


def test_the_record_round_trips_through_json() -> None:
    record = original(netns_cookie=None, pid_start=None)
    assert Record.from_json(record.to_json()) == record
    data = json.loads(record.to_json())
    assert data["version"] == netprep.RECORD_VERSION
    with pytest.raises(RecordError, match="version 9; this hopgate reads version 1"):
        Record.from_json(json.dumps({**data, "version": 9}))


def test_the_record_directory_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Path("/run/hopgate/interfaces") == netprep.RECORD_DIR
    assert netprep.Interfaces(["gw-c"], {}).record_dir == netprep.RECORD_DIR
    monkeypatch.setattr(netprep, "RECORD_DIR", tmp_path)
    assert netprep.Interfaces(["gw-c"], {}).record_dir == tmp_path
    assert netprep.Interfaces(["gw-c"], {}, record_dir=tmp_path / "x").record_dir == tmp_path / "x"
