"""The `jivocore` command line: built-in commands, plus those plugins register.

A plugin's command gets the desk with `@pass_desk`, opened on ``--db`` with the installed
plugins the first time a command asks for it.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from .desk import HelpDesk
from .errors import JivoError
from .plugins import collect, install_hint, make_plugin_manager, missing_extras

F = TypeVar("F", bound=Callable[..., Any])


class DeskOpener:
    """What a command's click context holds: the database, and the desk once opened."""

    def __init__(self, database: str, plugins: Iterable[object] = ()) -> None:
        self.database = database
        self.plugins = tuple(plugins)
        self._desk: HelpDesk | None = None

    def desk(self) -> HelpDesk:
        if self._desk is None:
            self._desk = HelpDesk.open(self.database, plugins=self.plugins)
        return self._desk

    def shutdown(self) -> None:
        if self._desk is not None:
            self._desk.shutdown()


def pass_desk(command: F) -> F:
    """Decorate a click command to receive the desk as its first argument."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opener = click.get_current_context().find_object(DeskOpener)
        if opener is None:
            raise click.UsageError("this command runs under the `jivocore` command line")
        return command(opener.desk(), *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class _Group(click.Group):
    """Turns a JivoError into a one-line message and exit status 1, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JivoError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


def make_cli(plugins: Iterable[object] = (), *, entry_points: bool = True) -> click.Group:
    """The command line with the commands of `plugins` and, with `entry_points`, of the
    installed plugins."""
    plugins = tuple(plugins)

    @click.group(cls=_Group)
    @click.option(
        "--db",
        "database",
        default="jivocore.db",
        show_default=True,
        envvar="JIVOCORE_DB",
        help="The desk's database: a SQLite file, or a URL a storage plugin understands.",
    )
    @click.version_option(importlib.metadata.version("jivocore"), prog_name="jivocore")
    @click.pass_context
    def cli(ctx: click.Context, database: str) -> None:
        """jivocore: an embeddable help desk. Commands below come from jivocore and its plugins."""
        ctx.obj = DeskOpener(database, plugins)
        ctx.call_on_close(ctx.obj.shutdown)

    @cli.command("plugins")
    def list_plugins() -> None:
        """List the installed plugins and the hooks each implements."""
        pm = make_plugin_manager(plugins, entry_points=entry_points)
        installed = {
            ep.name: ep.dist for ep in importlib.metadata.entry_points(group="jivocore") if ep.dist
        }
        for name, plugin in sorted(pm.list_name_plugin()):
            dist = installed.get(name)
            origin = (
                f"  (from {dist.name} {dist.version})" if dist else "  (registered by the host)"
            )
            click.echo(f"{name}{origin}")
            for caller in sorted(pm.get_hookcallers(plugin) or [], key=lambda c: c.name):
                impl = next(i for i in caller.get_hookimpls() if i.plugin is plugin)
                flags = [f for f in ("tryfirst", "trylast", "wrapper") if getattr(impl, f)]
                click.echo(f"    {caller.name}" + (f"  [{', '.join(flags)}]" if flags else ""))
        if entry_points:
            for ep in sorted(
                importlib.metadata.entry_points(group="jivocore"), key=lambda e: e.name
            ):
                missing = missing_extras(ep)
                if missing and pm.get_plugin(ep.name) is None:
                    click.echo(f"{ep.name}  (left out: needs {install_hint(ep, missing)})")

    from .demo import demo

    cli.add_command(demo)

    pm = make_plugin_manager(plugins, entry_points=entry_points)
    commands = collect(
        pm,
        "jivocore_register_commands",
        what="a click command",
        valid=lambda c: isinstance(c, click.Command) and bool(c.name),
        keys=lambda c: (str(c.name),),
        taken=cli.commands,
    )
    for command in commands.values():
        cli.add_command(command)
    return cli


def main() -> None:
    """The `jivocore` console script."""
    try:
        cli = make_cli()
    except JivoError as exc:
        raise SystemExit(f"jivocore: {type(exc).__name__}: {exc}") from exc
    cli(prog_name="jivocore")
