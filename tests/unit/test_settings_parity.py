"""One source of truth per setting: the pipeline's spec dataclasses (pipeline/model.py).

Every spec field with a default is a config key (or is declared INTERNAL), and
the config's default and bounds are the field's, in the key's unit; the
``hopgate relay`` options' defaults and ranges are ``RelaySettings``'.  The
policies are the pipeline's StrEnums, and the config still names their values
when given another.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

import click
import pytest
from click.testing import CliRunner
from pydantic.fields import FieldInfo

from hopgate import relayd
from hopgate.cli import main
from hopgate.control import config as C
from hopgate.control.config import ConfigError, parse
from hopgate.control.specs import MISSING, Setting, setting, settings
from hopgate.pipeline.model import (
    INTERNAL,
    BackendDown,
    BackendSpec,
    Bounds,
    DnatSpec,
    EchoPolicy,
    HealthKind,
    HealthSpec,
    IcmpRateSettings,
    Key,
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
)

# Each spec and the config section (pydantic model) that describes it.
SECTIONS: list[tuple[type[Any], type[Any]]] = [
    (RouterSpec, C.Config),
    (IcmpRateSettings, C.IcmpConfig),
    (NeighbourSettings, C.NeighbourConfig),
    (NatSpec, C.NatConfig),
    (Timeouts, C.TimeoutsConfig),
    (SnatSpec, C.SnatConfig),
    (ServiceSpec, C.ServiceConfig),
    (BackendSpec, C.BackendConfig),
    (HealthSpec, C.HealthConfig),
    (RelaySpec, C.RelayConfig),
    (RelaySettings, C.RelayConfig),  # [relay] holds both
]
# Specs the config does not describe field by field, and why.
NOT_SECTIONS = {
    PortSpec: "built from [[interface]] and the kernel's link (its MAC and MTU)",
    RouteSpec: "no defaults: [[route]]'s prefix and via",
    NextHopSpec: "parsed from a via string ('fe80::1%gw-u')",
    DnatSpec: "parsed from endpoint strings ('198.18.2.1:8080')",
    ReassemblySettings: "not configurable (RouterSpec.reassembly is INTERNAL)",
}
# Settings whose config default is None, meaning "derived from other keys".
DERIVED = {
    (HealthSpec, "kind"): "tcp, or icmp for a UDP service",
    (RelaySettings, "src_burst"): "the rate, at least 1",
    (RelaySettings, "iface_burst"): "the rate, at least 1",
}
# Spec fields whose settings are the section's own keys.
FLATTENED = {(RelaySpec, "settings"): "RelaySettings' fields are [relay]'s keys"}


def constraints(info: FieldInfo) -> dict[str, Any]:
    """The ge/gt/le bounds pydantic checks on a field (also inside ``X | None``)."""
    found: dict[str, Any] = {}

    def scan(meta: Any) -> None:
        for m in meta:
            if isinstance(m, FieldInfo):
                scan(m.metadata)
            for name in ("ge", "gt", "le", "lt"):
                if getattr(m, name, None) is not None:
                    found[name] = getattr(m, name)

    scan(info.metadata)
    for arg in get_args(info.annotation):
        if get_origin(arg) is Annotated:
            scan(get_args(arg)[1:])
    return found


def config_default(info: FieldInfo) -> Any:
    return info.get_default(call_default_factory=True)


def spec_cases() -> list[tuple[type[Any], type[Any], Setting]]:
    return [
        (spec, model, s)
        for spec, model in SECTIONS
        for s in settings(spec)
        if s.default is not MISSING and (spec, s.field) not in FLATTENED
    ]


@pytest.mark.parametrize(
    ("spec", "model", "s"),
    spec_cases(),
    ids=[f"{spec.__name__}.{s.field}" for spec, _, s in spec_cases()],
)
def test_every_spec_setting_is_a_config_key_with_the_specs_default_and_bounds(
    spec: type[Any], model: type[Any], s: Setting
) -> None:
    fields = model.model_fields
    if s.internal:
        assert s.key not in fields, f"{spec.__name__}.{s.field} is INTERNAL but a config key"
        return
    assert s.key in fields, f"{spec.__name__}.{s.field} has no key in {model.__name__}"
    info = fields[s.key]
    got = config_default(info)
    if (spec, s.field) in DERIVED:
        assert got is None, f"{model.__name__}.{s.key}: None means {DERIVED[spec, s.field]}"
    elif dataclasses.is_dataclass(s.default):
        # a section of its own: its keys are checked as its spec's
        assert any(sp is type(s.default) for sp, _ in SECTIONS), s.field
    elif s.default is None or isinstance(s.default, (bool, int, float, str)):
        assert got == s.to_key(s.default) and type(got) is type(s.to_key(s.default)), (
            f"{model.__name__}.{s.key} defaults to {got!r}, {spec.__name__}.{s.field} to"
            f" {s.default!r}"
        )
    else:  # a collection: the config gives a list
        assert type(s.default)(got) == s.default, (spec, s.field, got)
    assert constraints(info) == s.key_bounds(), (
        f"{model.__name__}.{s.key}'s bounds are not {spec.__name__}.{s.field}'s: give them"
        " in the spec (model.Bounds)"
    )


def nested_specs(spec: type[Any]) -> set[type[Any]]:
    found: set[type[Any]] = set()

    def walk(t: Any) -> None:
        if dataclasses.is_dataclass(t) and isinstance(t, type) and t not in found:
            found.add(t)
            for s in settings(t):
                walk(s.type)
        for arg in get_args(t):
            walk(arg)

    walk(spec)
    return found


def test_every_spec_reachable_from_the_router_spec_is_described_by_the_config() -> None:
    described = {spec for spec, _ in SECTIONS}
    for spec in nested_specs(RouterSpec):
        assert spec in described or spec in NOT_SECTIONS, (
            f"{spec.__name__}: add its section to SECTIONS, or say why not in NOT_SECTIONS"
        )
    assert not (described & set(NOT_SECTIONS))


def test_a_config_that_says_nothing_builds_the_specs_defaults() -> None:
    text = (
        '[[interface]]\nname = "a"\naddresses = ["198.18.0.1/24"]\n'
        '[nat]\n[relay]\ninterfaces = ["a"]\n'
        '[[service]]\nvip = "198.18.9.1"\nport = 80\nprotocol = "tcp"\n'
        'local_addresses = ["198.18.0.9"]\nbackend = [{ address = "198.18.0.10" }]\n'
    )
    spec = parse(text).router_spec({"a": (b"\x02" * 6, 1500)})
    assert spec.icmp == IcmpRateSettings()
    assert spec.neighbour == NeighbourSettings()
    assert spec.reassembly == ReassemblySettings()
    assert spec.nat is not None and spec.nat.timeouts == Timeouts()
    assert spec.nat == dataclasses.replace(NatSpec(), snat=(), dnat=())
    assert spec.relay is not None and spec.relay.settings == RelaySettings()
    (svc,) = spec.services
    assert (svc.scheduler, svc.echo, svc.on_backend_down) == (
        ServiceSpec.scheduler,
        ServiceSpec.echo,
        ServiceSpec.on_backend_down,
    )
    assert svc.maglev_table_size == ServiceSpec.maglev_table_size
    assert svc.health == HealthSpec()  # a tcp service: checked by tcp
    assert svc.backends[0].weight == BackendSpec.weight


def test_policies_are_the_pipelines_enums_and_bad_values_are_named() -> None:
    fields = C.ServiceConfig.model_fields
    assert fields["scheduler"].annotation is Scheduler
    assert fields["echo"].annotation is EchoPolicy
    assert fields["on_backend_down"].annotation is BackendDown
    kind = get_args(C.HealthConfig.model_fields["kind"].annotation)[0]  # Annotated[...] | None
    assert get_args(kind)[0] is HealthKind
    text = (
        '[[interface]]\nname = "a"\naddresses = ["198.18.0.1/24"]\n'
        '[[service]]\nvip = "198.18.9.1"\nport = 53\nprotocol = "udp"\n'
        'scheduler = "maglev"\necho = "forward"\non_backend_down = "close"\n'
        'local_addresses = ["198.18.0.9"]\nbackend = [{ address = "198.18.0.10" }]\n'
    )
    (svc,) = parse(text).router_spec({"a": (b"\x02" * 6, 1500)}).services
    assert svc.scheduler is Scheduler.MAGLEV and svc.echo is EchoPolicy.FORWARD
    assert svc.on_backend_down is BackendDown.CLOSE and svc.health.kind is HealthKind.ICMP
    # (what is replaced, by what): the error, as it has always read
    bad = {
        ('scheduler = "maglev"', 'scheduler = "random"'): "scheduler: Input should be"
        " 'rr', 'wrr', 'lc' or 'maglev'",
        ('echo = "forward"', 'echo = "reply"'): "echo: Input should be 'answer' or 'forward'",
        ('on_backend_down = "close"', "on_backend_down = 1"): "on_backend_down: Input should be"
        " 'keep' or 'close'",
        ('echo = "forward"\n', 'echo = "forward"\nhealth.kind = "udp"\n'): "health.kind: Input"
        " should be 'tcp', 'icmp', 'http' or 'none'",
    }
    for (old, new), error in bad.items():
        with pytest.raises(ConfigError) as e:
            parse(text.replace(old, new))
        assert [str(i) for i in e.value.issues] == [f"service[0].{error}"]


NO_DEFAULT = (None, getattr(click.core, "UNSET", None))  # click 8.2 and later: UNSET


def relay_options() -> dict[str, click.Option]:
    command = main.commands["relay"]
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}


def test_the_relay_options_defaults_and_ranges_are_relay_settings() -> None:
    options = relay_options()
    for s in settings(RelaySettings):
        if s.internal:
            assert s.field not in options
            continue
        option = options[s.field]
        if (RelaySettings, s.field) in DERIVED or s.default in (None, frozenset()):
            assert option.default in NO_DEFAULT, s.field  # ports: its callback's
        else:
            assert option.default == s.default, s.field
        if s.field == "ports":  # "80,443", checked by its callback: below
            continue
        if s.bounds is not None:
            kind = option.type
            assert isinstance(kind, (click.FloatRange, click.IntRange)), s.field
            low = "gt" if kind.min_open else "ge"
            got = {low: kind.min, "le": kind.max}
            assert {k: v for k, v in got.items() if v is not None} == s.key_bounds(), s.field


def test_the_relay_command_with_no_options_runs_with_relay_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[relayd.RelayOptions] = []
    monkeypatch.setattr(relayd, "run", seen.append)
    result = CliRunner().invoke(main, ["relay", "-i", "eth0"])
    assert result.exit_code == 0, result.output
    assert seen[0].settings == RelaySettings()
    got = CliRunner().invoke(main, ["relay", "-i", "eth0", "--src-rate", "0.5"])
    assert got.exit_code == 0 and seen[1].settings.src_burst == 1.0  # never below 1
    bounds = setting(RelaySettings, "ports").key_bounds()
    lowest, highest = bounds["ge"], bounds["le"]
    got = CliRunner().invoke(main, ["relay", "-i", "eth0", "--ports", f"{lowest},{highest}"])
    assert got.exit_code == 0 and seen[2].settings.ports == {lowest, highest}
    for port in (lowest - 1, highest + 1):
        assert CliRunner().invoke(main, ["relay", "-i", "eth0", f"--ports={port}"]).exit_code == 2


def test_a_new_setting_is_one_field_of_its_spec() -> None:
    """What [icmp], [neighbour] and [nat.timeouts] are built with: a field added to
    the spec is a key, with its default, bounds and unit, and reaches the spec."""

    @dataclass(frozen=True)
    class Spec:
        count: Annotated[int, Bounds(ge=1, le=9)] = 3
        pause: Annotated[float, Key("pause_ms", 1000), Bounds(ge=0.5)] = 2.0
        seed: Annotated[int, INTERNAL] = 7

    # get_type_hints() resolves the annotations in this module's namespace
    globals()["Spec"] = Spec
    try:

        @C._from_spec(Spec)
        class Section(C._Section):
            """A section."""

        assert list(Section.model_fields) == ["count", "pause_ms"]
        assert Section().to_spec() == Spec()
        assert Section.model_validate({"pause_ms": 750}).to_spec() == Spec(pause=0.75)
        with pytest.raises(ValueError, match="greater than or equal to 500"):
            Section.model_validate({"pause_ms": 499})
        with pytest.raises(ValueError, match="less than or equal to 9"):
            Section.model_validate({"count": 10})
        with pytest.raises(ValueError, match="Extra inputs"):
            Section.model_validate({"seed": 1})
    finally:
        del globals()["Spec"]


def test_hand_written_ms_keys_use_the_specs_scale() -> None:
    s = setting(HealthSpec, "interval")
    assert (s.key, s.scale) == ("interval_ms", 1000)
    assert C.HealthConfig().interval_ms == 2000 and s.from_key(500) == 0.5
    hints = typing.get_type_hints(NeighbourSettings, include_extras=True)
    assert Key("base_reachable_time_ms", 1000) in get_args(hints["reachable_time"])
