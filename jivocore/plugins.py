"""The plugin manager factory, and the one way the engine calls an implementation on its own."""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import PluginError

PROJECT = "jivocore"
log = logging.getLogger("jivocore")
hookimpl = pluggy.HookimplMarker(PROJECT)


def plugin_name(plugin: object) -> str:
    """A plugin's name: its module's name, or the class and module of an instance."""
    name = getattr(plugin, "__name__", None)
    if isinstance(name, str):
        return name
    cls = type(plugin)
    return f"{cls.__module__}.{cls.__qualname__}"


def make_plugin_manager(
    plugins: Iterable[object] = (), *, entry_points: bool = False, block: Iterable[str] = ()
) -> pluggy.PluginManager:
    """A new plugin manager holding `plugins` and, with `entry_points`, the installed plugins
    of the ``jivocore`` entry-point group; a plugin named in `block` is never registered.
    A misspelt hook or a wrong argument name fails here with a PluginError naming the plugin."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in block:
        pm.set_blocked(name)
    for plugin in plugins:
        _register(pm, plugin, plugin_name(plugin))
    if entry_points:
        for ep in sorted(importlib.metadata.entry_points(group=PROJECT), key=lambda e: e.name):
            if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
                continue
            missing = missing_extras(ep)
            if missing:
                # Not installed, as far as the host is concerned: its extra was not chosen.
                log.info("plugin %s is left out: it needs %s", ep.name, install_hint(ep, missing))
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"the installed plugin {ep.name} ({ep.value}) cannot be imported: {exc}",
                    plugin=ep.name,
                ) from exc
            if not pm.is_registered(plugin) and not pm.is_blocked(plugin_name(plugin)):
                _register(pm, plugin, ep.name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or plugin_name(exc.plugin)
        raise PluginError(f"plugin {name}: {exc}", plugin=name) from exc
    return pm


def missing_extras(ep: importlib.metadata.EntryPoint) -> list[str]:
    """The packages an entry point's extras (``"jivocore_email [email]"``) need that are not
    installed; a plugin whose optional dependencies are missing is not loaded."""
    if not ep.extras or ep.dist is None:
        return []
    wanted = set(ep.extras)
    missing = []
    for requirement in ep.dist.requires or []:
        spec, _, marker = requirement.partition(";")
        extras = set(re.findall(r"""extra\s*==\s*["']([^"']+)["']""", marker))
        if not extras & wanted:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", spec.strip())
        if name is None:
            continue
        try:
            importlib.metadata.distribution(name.group())
        except importlib.metadata.PackageNotFoundError:
            missing.append(name.group())
    return missing


def install_hint(ep: importlib.metadata.EntryPoint, missing: list[str]) -> str:
    """What to tell a person about a plugin left out for `missing` packages."""
    dist = ep.dist.name if ep.dist else "jivocore"
    return f"{', '.join(missing)}: pip install '{dist}[{','.join(ep.extras)}]'"


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name}: {exc}", plugin=name) from exc
    except ValueError as exc:
        raise PluginError(f"plugin {name} cannot be registered: {exc}", plugin=name) from exc


@attrs.frozen
class Implementation:
    """One plugin's implementation of a hook, callable on its own: the engine calls hooks this
    way where it must name the plugin behind an answer, or isolate one plugin from another."""

    plugin: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]

    def __call__(self, **kwargs: Any) -> Any:
        return self.function(*[kwargs[arg] for arg in self.argnames])


def implementations(pm: pluggy.PluginManager, hook: str) -> tuple[Implementation, ...]:
    """Each implementation of `hook`, in pluggy's calling order (last registered first)."""
    impls = getattr(pm.hook, hook).get_hookimpls()
    return tuple(
        Implementation(i.plugin_name, i.function, tuple(i.argnames)) for i in reversed(impls)
    )


def collect(
    pm: pluggy.PluginManager,
    hook: str,
    *,
    what: str,
    valid: Callable[[Any], bool],
    keys: Callable[[Any], Sequence[str]],
    taken: Iterable[str] = (),
) -> dict[str, Any]:
    """Run a ``jivocore_register_<things>(register)`` hook and gather what each plugin registers,
    by the first of its `keys`. Something that is not `valid`, or any key registered twice (or
    in `taken`, the core's own), fails with a PluginError naming the plugin."""
    found: dict[str, Any] = {}
    owners = dict.fromkeys(taken, "jivocore")
    for impl in implementations(pm, hook):

        def register(item: Any, plugin: str = impl.plugin) -> None:
            if not valid(item):
                raise PluginError(
                    f"plugin {plugin} registered {item!r}, which is not {what}", plugin=plugin
                )
            names = keys(item)
            for name in names:
                if name in owners:
                    raise PluginError(
                        f"plugin {plugin} registered {what} {name!r}, which {owners[name]} "
                        "already registered",
                        plugin=plugin,
                    )
            found[names[0]] = item
            owners.update(dict.fromkeys(names, plugin))

        impl(register=register)
    return found
