"""The built wheel installs `jivocore` and each built-in plugin as `jivocore_<name>`, never a
bare `plugins` or `adapters` package, and declares the entry points that find them."""

from __future__ import annotations

import configparser
import importlib.util
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def built_in_plugins() -> dict[str, Path]:
    """Every package under plugins/ and adapters/, by the name it installs as."""
    return {
        folder.name: folder
        for parent in ("plugins", "adapters")
        if (ROOT / parent).is_dir()
        for folder in sorted((ROOT / parent).iterdir())
        if (folder / "__init__.py").is_file()
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out)]
    if importlib.util.find_spec("hatchling") is not None:
        command.append("--no-isolation")  # the build backend is here: no download needed
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"building the wheel failed:\n{result.stdout}{result.stderr}"
    (built,) = out.glob("jivocore-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def top_level(wheel: zipfile.ZipFile) -> set[str]:
    return {name.split("/", 1)[0] for name in wheel.namelist()}


def entry_points(wheel: zipfile.ZipFile) -> configparser.ConfigParser:
    (path,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep names' case
    parser.read_string(wheel.read(path).decode())
    return parser


def test_the_wheel_holds_jivocore_and_each_built_in_plugin_by_its_own_name(wheel):
    plugins = built_in_plugins()
    assert "jivocore_sqlite" in plugins
    names = top_level(wheel)
    dist_info = {n for n in names if n.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert names - dist_info == {"jivocore", *plugins}
    for package, folder in {"jivocore": ROOT / "jivocore", **plugins}.items():
        for module in folder.rglob("*.py"):
            inside = f"{package}/{module.relative_to(folder).as_posix()}"
            assert inside in wheel.namelist(), f"{inside} is missing from the wheel"


def test_the_wheel_installs_no_bare_plugins_or_adapters_package(wheel):
    names = top_level(wheel)
    assert "plugins" not in names
    assert "adapters" not in names
    assert not names & {"tests", "bench", "docs"}


def test_the_wheel_ships_jivocore_testing(wheel):
    assert "jivocore/testing/__init__.py" in wheel.namelist()
    assert "jivocore/testing/pytest_plugin.py" in wheel.namelist()


def test_no_installed_module_imports_the_source_layout(wheel):
    """`plugins.jivocore_sqlite` exists in a clone, not once installed."""
    source_layout = re.compile(r"^\s*(from|import)\s+(plugins|adapters)\b", re.M)
    for name in wheel.namelist():
        if name.endswith(".py"):
            assert not source_layout.search(wheel.read(name).decode()), name


def test_the_wheel_declares_the_entry_points(wheel):
    declared = entry_points(wheel)
    assert declared["console_scripts"]["jivocore"].strip() == "jivocore.cli:main"
    assert declared["pytest11"]["jivocore"].strip() == "jivocore.testing.pytest_plugin"
    plugins = dict(declared["jivocore"])
    assert plugins["jivocore_sqlite"].strip() == "jivocore_sqlite"
    # Every built-in plugin is found through the entry points, as a third-party one is, and
    # every entry point names a module the wheel holds.
    for name in built_in_plugins():
        # "module" or "module [extra]": a plugin with optional dependencies names its extra.
        module = plugins.get(name, "").split("[")[0].strip()
        assert module == name, f"no `jivocore` entry point for {name}"
    for name, value in plugins.items():
        module = value.split("[")[0].split(":", 1)[0].strip()
        package = module.replace(".", "/")
        assert f"{package}/__init__.py" in wheel.namelist() or f"{package}.py" in (
            wheel.namelist()
        ), f"the entry point {name} = {value} names nothing in the wheel"
