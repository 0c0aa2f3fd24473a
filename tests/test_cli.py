"""The `jivocore` command line: `jivocore plugins` and `jivocore demo`, run as a user would."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from jivocore import HelpDesk, NotFoundError, Outcome, State, hookimpl
from jivocore.cli import make_cli, pass_desk

SCRIPT = Path(sys.executable).parent / "jivocore"


def test_the_console_script_lists_the_installed_plugins():
    """The real `jivocore` script, through its entry point, in a new process."""
    assert SCRIPT.exists(), f"the console script is not installed next to {sys.executable}"
    result = subprocess.run(
        [str(SCRIPT), "plugins"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("jivocore_sqlite ")]
    assert at, f"jivocore_sqlite is not listed:\n{result.stdout}"
    assert re.fullmatch(r"jivocore_sqlite  \(from jivocore \S+\)", lines[at[0]])
    assert lines[at[0] + 1] == "    jivocore_get_storage  [trylast]"


def test_plugins_lists_a_host_registered_plugin_and_its_hooks():
    listener = types.ModuleType("jivocore_listener")

    @hookimpl(tryfirst=True)
    def jivocore_events_committed(events):
        pass

    @hookimpl
    def jivocore_register_commands(register):
        pass

    listener.jivocore_events_committed = jivocore_events_committed  # type: ignore[attr-defined]
    listener.jivocore_register_commands = jivocore_register_commands  # type: ignore[attr-defined]
    result = CliRunner().invoke(make_cli(plugins=[listener]), ["plugins"])
    assert result.exit_code == 0, result.output
    assert (
        "jivocore_listener  (registered by the host)\n"
        "    jivocore_events_committed  [tryfirst]\n"
        "    jivocore_register_commands\n"
    ) in result.output
    assert "    jivocore_get_storage  [trylast]\n" in result.output


def test_a_jivo_error_in_a_command_is_one_line_and_exit_status_1(tmp_path):
    @click.command("whois")
    @click.argument("operator_id")
    @pass_desk
    def whois(desk, operator_id):
        click.echo(desk.operator(operator_id).name)

    commands = types.ModuleType("jivocore_whois")

    @hookimpl
    def jivocore_register_commands(register):
        register(whois)

    commands.jivocore_register_commands = jivocore_register_commands  # type: ignore[attr-defined]
    cli = make_cli(plugins=[commands], entry_points=False)
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "desk.db"), "whois", "nobody"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: NotFoundError: ")
    assert len(result.output.strip().splitlines()) == 1
    assert not isinstance(result.exception, NotFoundError)  # no traceback for the user


# --- jivocore demo --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The demo, played once on a new file: the file, and what it printed."""
    database = tmp_path_factory.mktemp("demo") / "demo.db"
    result = CliRunner().invoke(make_cli(), ["demo", "--db", str(database)])
    assert result.exit_code == 0, result.output
    return database, result.output


def steps(output: str) -> dict[str, list[str]]:
    """The demo's output by step: each step's first words -> the lines it printed."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in output.splitlines():
        heading = re.match(r"\d\d:\d\d:\d\d  (.*)", line)
        if heading:
            current = found.setdefault(heading.group(1), [])
        elif line.strip():
            current.append(line.strip())
    return found


def step(output: str, starting: str) -> list[str]:
    (lines,) = [lines for text, lines in steps(output).items() if text.startswith(starting)]
    return lines


def inbox_of(lines: list[str], operator: str) -> str:
    (line,) = [line for line in lines if line.startswith(f"{operator} ")]
    return re.search(r"Inbox: (.*?)\s+Chats:", line).group(1)  # type: ignore[union-attr]


def test_demo_shows_an_ignored_chat_leave_and_reappear(day):
    _, output = day
    ignored = step(output, "Ann ignores Pedro's chat")
    assert inbox_of(ignored, "Ann") == "Maria"
    assert inbox_of(ignored, "Bob") == "Maria, Pedro"
    back = step(output, "A minute passes")
    assert inbox_of(back, "Ann") == "Pedro"


def test_demo_shows_the_blocked_spammer_refused(day):
    _, output = day
    blocked = step(output, "A spammer writes")
    assert any(
        line.startswith("The spammer writes again and is refused: ClientBlocked: client Spammer")
        for line in blocked
    ), blocked
    assert "All: Spammer (blocked), Pedro (answered), Maria (answered)" in blocked


def test_demo_ends_with_a_joined_chat_of_two_episodes(day):
    database, output = day
    last = step(output, "Three hours later Ann joins")
    assert "Maria's conversation: 4 messages over 2 episodes." in last
    assert output.rstrip().endswith(
        f"The day is stored in {database}; open it with any SQLite tool."
    )


def test_demo_leaves_a_database_whose_state_matches_what_it_showed(day):
    database, _ = day
    with HelpDesk.open(str(database)) as desk:
        operators = {o.name: o for o in desk.operators()}
        assert sorted(operators) == ["Ann", "Bob", "Eva"]
        ann, bob, eva = operators["Ann"], operators["Bob"], operators["Eva"]

        closed = desk.archive().items
        names = [desk.client(c.client_id).name for c in closed]
        assert names == ["Spammer", "Pedro"]
        assert [c.outcome for c in closed] == [Outcome.BLOCKED, Outcome.ANSWERED]

        (maria,) = desk.chats(ann.id)
        assert desk.client(maria.client_id).name == "Maria"
        assert (maria.state, maria.owner_id, maria.episode) == (State.ACTIVE, ann.id, 2)
        assert len(desk.messages(maria.id)) == 4
        assert desk.chats(bob.id) == [] and desk.chats(eva.id) == []
        assert desk.inbox(ann.id) == []

        spammer = desk.client(closed[0].client_id)
        assert spammer.block is not None and spammer.block.by == eva.id
        types_ = [e.type for e in desk.events(limit=1000).items]
        for happened in ("ignored", "accepted", "transferred", "invited", "left", "closed"):
            assert happened in types_
        assert types_.count("joined") == 1


def test_demo_refuses_an_existing_file_without_replace(tmp_path):
    database = tmp_path / "mine.db"
    database.write_bytes(b"precious")
    runner = CliRunner()
    result = runner.invoke(make_cli(), ["demo", "--db", str(database)])
    assert result.exit_code == 1
    assert "exists" in result.output and "--replace" in result.output
    assert database.read_bytes() == b"precious"

    result = runner.invoke(make_cli(), ["demo", "--db", str(database), "--replace"])
    assert result.exit_code == 0, result.output
    assert "2 episodes" in result.output
    with HelpDesk.open(str(database)) as desk:
        assert len(desk.operators()) == 3
