"""``hopgate relay``'s options: mistakes are explained before anything starts."""

from __future__ import annotations

from click.testing import CliRunner

from hopgate.cli import main


def relay(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["relay", *args])
    return result.exit_code, result.output


def test_an_interface_is_required() -> None:
    code, out = relay()
    assert code == 2 and "Missing option '-i' / '--iface'" in out


def test_bad_ports_rates_mtus_and_peers_are_explained() -> None:
    code, out = relay("-i", "eth0", "--ports", "80,http")
    assert code == 2 and "'http' is not a port (1-65535); give them as 80,443" in out
    code, out = relay("-i", "eth0", "--src-rate", "0")
    assert code == 2 and "--src-rate" in out
    code, out = relay("-i", "eth0", "--min-mtu", "1400", "--max-mtu", "1300")
    assert code == 1 and "--min-mtu 1400 is above --max-mtu 1300" in out
    code, out = relay("-i", "eth0", "--peer", "server-2")
    assert code == 1 and "--peer: 'server-2' does not appear to be an IPv4 or IPv6 address" in out
    code, out = relay("-i", "eth0", "--mark", "64")
    assert code == 2 and "--mark" in out
    code, out = relay("-i", "eth0", "--filter", "fast")
    assert code == 2 and "'fast' is not one of 'auto', 'ebpf', 'classic'" in out


def test_an_interface_that_is_not_there() -> None:
    code, out = relay("-i", "hg-no-such-if", "-s", "/run/hopgate/test-relay-cli.sock")
    assert code == 1 and "no interface named 'hg-no-such-if' here" in out
