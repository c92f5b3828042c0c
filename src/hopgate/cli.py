"""The ``hopgate`` command."""

from __future__ import annotations

import json
import logging
import sys

import click

from hopgate import __version__


def _fail(message: str) -> None:
    click.echo(f"hopgate: {message}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hopgate")
def main() -> None:
    """A user-space router for Linux that gets ICMP right."""


@main.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="TOML config file.",
)
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
    show_default=True,
)
def run(config_path: str, log_level: str) -> None:
    """Take the configured interfaces and route until SIGINT or SIGTERM."""
    from hopgate import daemon
    from hopgate.control.admin import AdminError
    from hopgate.control.config import ConfigError, load
    from hopgate.io.netprep import PrepareError

    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = load(config_path)
        daemon.run(cfg, config_path)
    except (ConfigError, PrepareError, AdminError) as e:
        _fail(str(e))
    except PermissionError as e:
        _fail(f"{e} (hopgate needs root, or CAP_NET_RAW and CAP_NET_ADMIN)")


@main.command("check-config")
@click.argument("config_path", type=click.Path(dir_okay=False))
def check_config(config_path: str) -> None:
    """Validate a config file; list every problem with its key path."""
    from hopgate.control.config import ConfigError, load

    try:
        cfg = load(config_path)
    except ConfigError as e:
        _fail(str(e))
    n_if, n_routes = len(cfg.interface), len(cfg.route)
    click.echo(f"{config_path}: ok ({n_if} interfaces, {n_routes} routes)")


def _socket_for(socket_path: str | None, config_path: str | None) -> str:
    from hopgate.control.config import DEFAULT_ADMIN_SOCKET, ConfigError, load

    if socket_path:
        return socket_path
    if config_path:
        try:
            return load(config_path).admin.socket
        except ConfigError as e:
            _fail(str(e))
    return DEFAULT_ADMIN_SOCKET


@main.command()
@click.option("-s", "--socket", "socket_path", help="Admin socket of the daemon.")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Find the socket in this config.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw state as JSON.")
def status(socket_path: str | None, config_path: str | None, as_json: bool) -> None:
    """Show a running daemon's counters: traffic, drops by reason, ICMP sent."""
    from rich.console import Console

    from hopgate.control import status as status_view
    from hopgate.control.admin import AdminError, fetch_status

    path = _socket_for(socket_path, config_path)
    try:
        state = fetch_status(path)
    except AdminError as e:
        _fail(str(e))
    if as_json:
        click.echo(json.dumps(state, indent=2))
    else:
        status_view.render(state, Console())


if __name__ == "__main__":
    main()
