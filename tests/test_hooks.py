"""The hooks: each documented with its exact signature, each tested for what it does.

The two meta-tests come first (as datasette has them); then one `test_hook_<name>` (and its
variants) per hook, then how plugins are checked, named and blocked at start-up.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import sqlite3
import types
from collections.abc import Callable
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import click
import pytest
from click.testing import CliRunner

import jivocore_sqlite
from jivocore import (
    ConfigurationError,
    Conversation,
    EntityType,
    HasAny,
    HelpDesk,
    In,
    Index,
    InvalidTransition,
    Not,
    PluginError,
    Range,
    State,
    ValidationError,
    Vetoed,
    hookimpl,
    hookspecs,
    make_plugin_manager,
)
from jivocore.cli import make_cli, pass_desk
from jivocore.testing import FakeClock, RecordingChannel, channel_plugin

ROOT = Path(__file__).resolve().parent.parent
HOOKS_DOC = ROOT / "docs" / "hooks.md"
# The hook specifications, as pluggy sees them (it marks each with `jivocore_spec`).
HOOKS = sorted(name for name, f in vars(hookspecs).items() if hasattr(f, "jivocore_spec"))


def documented_signatures() -> dict[str, str]:
    """Each `## jivocore_<hook>` section of docs/hooks.md -> the first line of its first code
    block, which is the hook's signature."""
    text = HOOKS_DOC.read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    found: dict[str, str] = {}
    for section in sections:
        heading, _, body = section.partition("\n")
        if not heading.startswith("jivocore_"):
            continue
        block = re.search(r"```python\n(.*?)\n", body)
        found[heading.strip()] = block.group(1) if block else ""
    return found


def test_the_meta_tests_see_every_hook_the_plugin_manager_has():
    pm = make_plugin_manager()
    assert sorted(name for name in vars(pm.hook) if name.startswith("jivocore_")) == HOOKS
    assert len(HOOKS) >= 7


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_exact_signature(hook):
    signature = f"{hook}{inspect.signature(getattr(hookspecs, hook))}"
    documented = documented_signatures()
    assert hook in documented, f"docs/hooks.md has no section `## {hook}`"
    assert documented[hook] == signature, (
        f"docs/hooks.md documents {hook} as\n    {documented[hook]}\nbut its signature is\n"
        f"    {signature}"
    )


def test_docs_hooks_documents_no_hook_that_does_not_exist():
    assert sorted(documented_signatures()) == HOOKS


def test_the_examples_in_docs_hooks_are_valid_python():
    text = HOOKS_DOC.read_text(encoding="utf-8")
    signatures = set(documented_signatures().values())
    for example in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        if example.strip() not in signatures:
            ast.parse(example)


@functools.cache
def _test_function_names() -> frozenset[str]:
    """The names of every test function under tests/, module-level or in a class."""
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names.update(
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test_")
        )
    return frozenset(names)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    wanted = "test_hook_" + hook.removeprefix("jivocore_")
    assert wanted in _test_function_names(), f"no test function named {wanted} under tests/"


# --- helpers --------------------------------------------------------------------------------------


def plugin(name: str, *functions: Callable[..., Any]) -> types.ModuleType:
    """A plugin named `name`, shaped as a module is, holding these hook implementations."""
    module = types.ModuleType(name)
    for function in functions:
        setattr(module, function.__name__, function)
    return module


def make_desk(tmp_path: Path, *plugins: object, **kwargs: Any) -> HelpDesk:
    """A desk on a new SQLite file with the built-in SQLite plugin, a "web" channel and
    `plugins`, composed explicitly (no entry points)."""
    return HelpDesk(
        plugins=[jivocore_sqlite, channel_plugin(RecordingChannel("web")), *plugins],
        settings={"database": str(tmp_path / "desk.db")},
        clock=kwargs.pop("clock", FakeClock()),
        **kwargs,
    )


def dump(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return list(conn.iterdump())


# --- jivocore_get_storage -----------------------------------------------------------------------


@pytest.mark.parametrize("first", [True, False], ids=["registered-first", "registered-last"])
def test_hook_get_storage(tmp_path, first):
    """A plugin that answers wins over the built-in SQLite one (trylast), whatever the order."""
    elsewhere = jivocore_sqlite.SQLiteStorage(str(tmp_path / "elsewhere.db"))
    asked: list[dict[str, Any]] = []

    @hookimpl
    def jivocore_get_storage(settings):
        asked.append(dict(settings))
        return elsewhere

    mine = plugin("jivocore_elsewhere", jivocore_get_storage)
    order = [mine, jivocore_sqlite] if first else [jivocore_sqlite, mine]
    with HelpDesk(
        plugins=[*order, channel_plugin(RecordingChannel("web"))],
        settings={"database": str(tmp_path / "desk.db")},
    ) as desk:
        assert desk.storage is elsewhere
        assert desk.storage_plugin == "jivocore_elsewhere"
        assert asked[0]["database"] == str(tmp_path / "desk.db")
        desk.receive("web", "visitor-1", "hello")
    assert not (tmp_path / "desk.db").exists()
    with closing(sqlite3.connect(tmp_path / "elsewhere.db")) as conn:
        assert conn.execute("select count(*) from messages").fetchone() == (1,)


def test_hook_get_storage_none_lets_sqlite_answer(tmp_path):
    asked: list[str] = []

    @hookimpl
    def jivocore_get_storage(settings):
        asked.append(settings["database"])
        return None

    with make_desk(tmp_path, plugin("jivocore_notmine", jivocore_get_storage)) as desk:
        assert asked == [str(tmp_path / "desk.db")]
        assert isinstance(desk.storage, jivocore_sqlite.SQLiteStorage)
        assert desk.storage_plugin == "jivocore_sqlite"
        desk.receive("web", "visitor-1", "hello")
    with closing(sqlite3.connect(tmp_path / "desk.db")) as conn:
        assert conn.execute("select count(*) from messages").fetchone() == (1,)


def test_hook_get_storage_wrong_type_is_a_plugin_error(tmp_path):
    @hookimpl(tryfirst=True)
    def jivocore_get_storage(settings):
        return "sqlite:///desk.db"  # a URL, not a storage backend

    with pytest.raises(PluginError, match="jivocore_confused") as caught:
        make_desk(tmp_path, plugin("jivocore_confused", jivocore_get_storage))
    assert caught.value.plugin == "jivocore_confused"


def test_hook_get_storage_no_storage_is_a_configuration_error(tmp_path):
    @hookimpl
    def jivocore_get_storage(settings):
        return None

    with pytest.raises(ConfigurationError, match="no storage plugin"):
        HelpDesk(settings={"database": str(tmp_path / "desk.db")})
    with pytest.raises(ConfigurationError):
        HelpDesk(plugins=[plugin("jivocore_shy", jivocore_get_storage)])
    # SQLite declines URLs it does not know: with nothing else installed, nothing answers.
    with pytest.raises(ConfigurationError, match="postgresql://"):
        HelpDesk(plugins=[jivocore_sqlite], settings={"database": "postgresql://db/desk"})
    assert not (tmp_path / "desk.db").exists()


# --- jivocore_register_entity_types -------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Deal:
    id: str
    version: int = 0
    client_id: str
    title: str
    stage: str = "new"
    amount: int = 0
    created: datetime


def deals_plugin() -> types.ModuleType:
    @hookimpl
    def jivocore_register_entity_types(register):
        register(EntityType(name="deals", cls=Deal, indexes=(("stage",), ("client_id",))))

    return plugin("jivocore_deals", jivocore_register_entity_types)


def test_hook_register_entity_types(tmp_path):
    clock = FakeClock()
    with make_desk(tmp_path, deals_plugin(), clock=clock) as desk:
        assert desk.entity_types["deals"].cls is Deal
        client = desk.add_client("Maria")
        with desk.storage.transaction() as tx:
            for n, (stage, amount) in enumerate([("new", 100), ("won", 2500), ("won", 900)]):
                tx.add(
                    Deal(
                        id=f"deal-{n}",
                        client_id=client.id,
                        title=f"deal {n}",
                        stage=stage,
                        amount=amount,
                        created=clock.now(),
                    )
                )
        with desk.reading() as tx:
            won = list(tx.select(Deal, {"stage": "won"}, order=("-amount",)))
            assert [d.id for d in won] == ["deal-1", "deal-2"]
            assert tx.count(Deal, {"amount": Range(ge=900)}) == 2
            assert tx.count(Deal, {"stage": In(["new", "lost"])}) == 1
            assert tx.get(Deal, "deal-0") == Deal(
                id="deal-0",
                version=1,
                client_id=client.id,
                title="deal 0",
                amount=100,
                created=clock.now(),
            )
    with closing(sqlite3.connect(tmp_path / "desk.db")) as conn:
        columns = {row[1] for row in conn.execute("pragma table_info(deals)")}
        indexed = {
            tuple(info[2] for info in conn.execute(f"pragma index_info('{index[1]}')"))
            for index in conn.execute("pragma index_list(deals)").fetchall()
        }
    assert {"id", "version", "client_id", "title", "stage", "amount", "created"} <= columns
    # Each declared index, then the id (jivocore_sqlite: sets are probed from its entries).
    assert {("stage", "id"), ("client_id", "id")} <= indexed


def test_hook_register_entity_types_with_a_partial_index(tmp_path):
    """An index with a condition covers only the rows that meet it, and the condition may be
    an equality, In or Range of scalar fields: what every backend can write as a partial
    index. Anything else is refused where the type is declared, naming the field."""
    won = Index(("id",), where={"stage": "won", "amount": Range(ge=1000)})

    @hookimpl
    def jivocore_register_entity_types(register):
        register(EntityType(name="deals", cls=Deal, indexes=(("stage",), won)))

    with make_desk(tmp_path, plugin("jivocore_deals", jivocore_register_entity_types)) as desk:
        assert desk.entity_types["deals"].indexes[1] == won
    with closing(sqlite3.connect(tmp_path / "desk.db")) as conn:
        (sql,) = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deals' "
            "AND sql LIKE '%WHERE%'"
        ).fetchone()
    assert sql.endswith("ON [deals] ([id]) WHERE [stage] = 'won' AND [amount] >= 1000")
    for field, cond in [
        ("stage", Not("lost")),
        ("stage", HasAny(["won"])),
        ("title", {"a": 1}),
        ("amount", [1, 2]),
        ("nope", 1),
    ]:
        with pytest.raises(ValidationError, match=field):
            EntityType(name="deals", cls=Deal, indexes=(Index(("id",), where={field: cond}),))


@attrs.frozen(kw_only=True)
class Note:
    id: str
    version: int = 0
    text: str = ""


def notes_plugin(name: str, table: str) -> types.ModuleType:
    @hookimpl
    def jivocore_register_entity_types(register):
        register(EntityType(name=table, cls=Note))

    return plugin(name, jivocore_register_entity_types)


def test_hook_register_entity_types_a_core_name_is_a_plugin_error(tmp_path):
    with pytest.raises(PluginError, match="jivocore_copycat") as caught:
        make_desk(tmp_path, notes_plugin("jivocore_copycat", "conversations"))
    assert caught.value.plugin == "jivocore_copycat"
    assert "'conversations', which jivocore already registered" in str(caught.value)


def test_hook_register_entity_types_a_duplicate_name_is_a_plugin_error(tmp_path):
    with pytest.raises(PluginError) as caught:
        make_desk(tmp_path, deals_plugin(), notes_plugin("jivocore_copycat", "deals"))
    # Whichever of the two registered second is named; the message names both.
    named = {"jivocore_deals", "jivocore_copycat"}
    assert caught.value.plugin in named
    assert all(name in str(caught.value) for name in named)


@pytest.mark.parametrize(
    "thing", [Deal, "deals", ("deals", Deal)], ids=["a-class", "a-name", "a-tuple"]
)
def test_hook_register_entity_types_wrong_type_is_a_plugin_error(tmp_path, thing):
    @hookimpl
    def jivocore_register_entity_types(register):
        register(thing)

    with pytest.raises(PluginError, match="jivocore_sloppy") as caught:
        make_desk(tmp_path, plugin("jivocore_sloppy", jivocore_register_entity_types))
    assert caught.value.plugin == "jivocore_sloppy"


def test_hook_register_entity_types_a_class_stored_twice_is_a_plugin_error(tmp_path):
    """The same class under a second name would split its rows between two tables."""

    @hookimpl
    def jivocore_register_entity_types(register):
        register(EntityType(name="deals_again", cls=Deal))

    twice = plugin("jivocore_twice", jivocore_register_entity_types)
    with pytest.raises(PluginError) as caught:
        make_desk(tmp_path, deals_plugin(), twice)
    # Whichever of the two registered second is named, as for any other duplicate.
    assert caught.value.plugin in {"jivocore_deals", "jivocore_twice"}
    assert caught.value.plugin in str(caught.value)


# --- jivocore_register_channels -----------------------------------------------------------------


def test_hook_register_channels(tmp_path):
    sms = RecordingChannel("sms")

    @hookimpl
    def jivocore_register_channels(register):
        register(sms)

    with make_desk(tmp_path, plugin("jivocore_sms", jivocore_register_channels)) as desk:
        assert desk.channels["sms"] is sms
        ann = desk.add_operator("Ann", presence="online")
        message = desk.receive("sms", "+351900000001", "hello by text")
        conversation = desk.conversation(message.conversation_id)
        assert conversation.channel == "sms"
        desk.accept(conversation.id, ann.id)
        reply = desk.reply(conversation.id, ann.id, "hello back")
        assert desk.deliver() == 1
    assert [(o.message.id, o.identity.external_id) for o in sms.sent] == [
        (reply.id, "+351900000001")
    ]


def test_hook_register_channels_duplicate_name_is_a_plugin_error(tmp_path):
    @hookimpl
    def jivocore_register_channels(register):
        register(RecordingChannel("web"))  # make_desk's channel plugin has "web" already

    with pytest.raises(PluginError, match="'web'") as caught:
        make_desk(tmp_path, plugin("jivocore_webchat2", jivocore_register_channels))
    # Whichever of the two registered second is named; the message names both.
    first = "channels:web"  # channel_plugin names itself after its channels
    assert caught.value.plugin in {"jivocore_webchat2", first}
    assert "jivocore_webchat2" in str(caught.value) and first in str(caught.value)


class _NoSend:
    name = "fax"


class _WebChat:
    """A channel class: registering it instead of an instance is the mistake to catch."""

    name = "webchat"

    def send(self, outbound):
        return None


class _NoName:
    name = ""

    def send(self, outbound):
        return None


@pytest.mark.parametrize(
    "thing",
    ["web", _NoSend(), _NoName(), _WebChat],
    ids=["a-name", "no-send", "empty-name", "the-class-not-an-instance"],
)
def test_hook_register_channels_wrong_type_is_a_plugin_error(tmp_path, thing):
    @hookimpl
    def jivocore_register_channels(register):
        register(thing)

    with pytest.raises(PluginError, match="jivocore_badchannel") as caught:
        make_desk(tmp_path, plugin("jivocore_badchannel", jivocore_register_channels))
    assert caught.value.plugin == "jivocore_badchannel"


# --- jivocore_register_commands -----------------------------------------------------------------


def commands_plugin(name: str, *commands: click.Command) -> types.ModuleType:
    @hookimpl
    def jivocore_register_commands(register):
        for command in commands:
            register(command)

    return plugin(name, jivocore_register_commands)


@click.command("hire")
@click.argument("name")
@pass_desk
def hire(desk, name):
    """Add an online operator."""
    operator = desk.add_operator(name, presence="online")
    click.echo(f"hired {operator.name} on {desk.settings['database']} ({type(desk).__name__})")


def test_hook_register_commands(tmp_path):
    cli = make_cli(plugins=[commands_plugin("jivocore_hr", hire)], entry_points=False)
    assert "hire" in cli.commands
    runner = CliRunner()
    assert "Add an online operator." in runner.invoke(cli, ["--help"]).output
    database = str(tmp_path / "desk.db")
    result = runner.invoke(cli, ["--db", database, "hire", "Ann"])
    assert result.exit_code == 0, result.output
    assert result.output == f"hired Ann on {database} (HelpDesk)\n"
    with HelpDesk.open(database) as desk:
        assert [(o.name, o.presence) for o in desk.operators()] == [("Ann", "online")]


def test_hook_register_commands_duplicate_is_a_plugin_error():
    @click.command("hire")
    def another_hire():
        pass

    with pytest.raises(PluginError, match="'hire'") as caught:
        make_cli(
            plugins=[
                commands_plugin("jivocore_hr", hire),
                commands_plugin("jivocore_staffing", another_hire),
            ],
            entry_points=False,
        )
    named = {"jivocore_hr", "jivocore_staffing"}
    assert caught.value.plugin in named
    assert all(name in str(caught.value) for name in named)


@pytest.mark.parametrize("builtin", ["plugins", "demo"])
def test_hook_register_commands_clashing_with_a_builtin_is_a_plugin_error(builtin):
    @click.command(builtin)
    def impostor():
        pass

    with pytest.raises(PluginError, match="jivocore_impostor") as caught:
        make_cli(plugins=[commands_plugin("jivocore_impostor", impostor)], entry_points=False)
    assert caught.value.plugin == "jivocore_impostor"


def test_hook_register_commands_wrong_type_is_a_plugin_error():
    def not_a_command():
        pass

    with pytest.raises(PluginError, match="jivocore_plain") as caught:
        make_cli(plugins=[commands_plugin("jivocore_plain", not_a_command)], entry_points=False)
    assert caught.value.plugin == "jivocore_plain"


# --- jivocore_prepare_converter -----------------------------------------------------------------


class Price:
    """A plugin's own value type: not attrs, so the converter knows nothing of it by itself."""

    def __init__(self, cents: int, currency: str) -> None:
        self.cents = cents
        self.currency = currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Price) and (self.cents, self.currency) == (
            other.cents,
            other.currency,
        )

    def __hash__(self) -> int:
        return hash((self.cents, self.currency))

    def __str__(self) -> str:
        return f"{self.cents // 100}.{self.cents % 100:02d} {self.currency}"

    @classmethod
    def parse(cls, text: str) -> Price:
        amount, currency = text.split()
        units, cents = amount.split(".")
        return cls(int(units) * 100 + int(cents), currency)


@attrs.frozen(kw_only=True)
class Quote:
    id: str
    version: int = 0
    total: Price
    options: tuple[Price, ...] = ()


def test_hook_prepare_converter(tmp_path):
    prepared: list[Any] = []

    @hookimpl
    def jivocore_prepare_converter(converter):
        prepared.append(converter)
        converter.register_unstructure_hook(Price, str)
        converter.register_structure_hook(Price, lambda value, _: Price.parse(value))

    @hookimpl
    def jivocore_register_entity_types(register):
        register(EntityType(name="quotes", cls=Quote))

    pricing = plugin("jivocore_pricing", jivocore_prepare_converter, jivocore_register_entity_types)
    quote = Quote(id="q1", total=Price(1250, "EUR"), options=(Price(99, "EUR"), Price(5, "USD")))
    with make_desk(tmp_path, pricing) as desk:
        assert prepared == [desk.converter]
        with desk.storage.transaction() as tx:
            tx.add(quote)
        with desk.reading() as tx:
            assert tx.get(Quote, "q1") == attrs.evolve(quote, version=1)
    with closing(sqlite3.connect(tmp_path / "desk.db")) as conn:
        stored = conn.execute("select total, options from quotes").fetchone()
    assert stored == ('"12.50 EUR"', '["0.99 EUR","0.05 USD"]')


def test_hook_prepare_converter_is_per_desk(tmp_path):
    """Another desk, without the plugin, has a converter that knows nothing of Price."""

    @hookimpl
    def jivocore_prepare_converter(converter):
        converter.register_unstructure_hook(Price, str)

    with make_desk(tmp_path, plugin("jivocore_pricing", jivocore_prepare_converter)) as desk:
        assert desk.converter.unstructure(Price(100, "EUR")) == "1.00 EUR"
    (tmp_path / "other").mkdir()
    with make_desk(tmp_path / "other") as plain:
        assert plain.converter.unstructure(Price(100, "EUR")) != "1.00 EUR"


# --- jivocore_veto_transition -------------------------------------------------------------------


class Calls:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []


def veto_plugin(name: str, calls: Calls, refuse: Callable[[str], str | None]) -> types.ModuleType:
    @hookimpl
    def jivocore_veto_transition(desk, command, before, after, actor):
        calls.calls.append(
            {"desk": desk, "command": command, "before": before, "after": after, "actor": actor}
        )
        return refuse(command)

    return plugin(name, jivocore_veto_transition)


def test_hook_veto_transition(tmp_path):
    calls = Calls()
    vetoer = veto_plugin(
        "jivocore_nofridays", calls, lambda c: "no accepting today" if c == "accept" else None
    )
    with make_desk(tmp_path, vetoer) as desk:
        ann = desk.add_operator("Ann", presence="online")
        conversation_id = desk.receive("web", "visitor-1", "hello").conversation_id
        before = desk.conversation(conversation_id)
        events = desk.events().items
        calls.calls.clear()
        snapshot = dump(tmp_path / "desk.db")
        with pytest.raises(Vetoed, match=r"jivocore_nofridays.*no accepting today") as caught:
            desk.accept(conversation_id, ann.id)
        assert caught.value.plugin == "jivocore_nofridays"
        assert caught.value.command == "accept"
        assert caught.value.reason == "no accepting today"
        assert dump(tmp_path / "desk.db") == snapshot
        assert desk.conversation(conversation_id) == before
        assert desk.events().items == events
        # What the plugin was shown: the conversation before, as it would be after, and who.
        (call,) = calls.calls
        assert call["desk"] is desk
        assert call["command"] == "accept"
        assert call["before"] == before
        assert call["after"].state is State.ACTIVE
        assert call["after"].owner_id == ann.id
        assert call["actor"] == ann


def test_hook_veto_transition_none_lets_the_command_through(tmp_path):
    calls = Calls()
    with make_desk(tmp_path, veto_plugin("jivocore_lenient", calls, lambda c: None)) as desk:
        ann = desk.add_operator("Ann", presence="online")
        message = desk.receive("web", "visitor-1", "hello")
        accepted = desk.accept(message.conversation_id, ann.id)
        assert accepted.state is State.ACTIVE
        desk.close(message.conversation_id, ann.id)
    commands = [(c["command"], c["before"] is None, c["actor"]) for c in calls.calls]
    assert commands == [("receive", True, None), ("accept", False, ann), ("close", False, ann)]
    opened = calls.calls[0]["after"]
    assert isinstance(opened, Conversation) and opened.state is State.INBOX


def test_hook_veto_transition_first_reason_wins_and_nothing_is_stored(tmp_path):
    """A veto on `receive` refuses a client's first message: no client, no conversation."""
    calls = Calls()
    vetoer = veto_plugin("jivocore_closed_today", calls, lambda c: "we are closed")
    with make_desk(tmp_path, vetoer) as desk:
        snapshot = dump(tmp_path / "desk.db")
        with pytest.raises(Vetoed, match=r"jivocore_closed_today.*we are closed"):
            desk.receive("web", "visitor-1", "hello")
        assert dump(tmp_path / "desk.db") == snapshot
        assert desk.clients().items == ()


# --- jivocore_events_committed ------------------------------------------------------------------


def test_hook_events_committed(tmp_path):
    seen: list[tuple[str, list[str], State]] = []

    @hookimpl
    def jivocore_events_committed(desk, events):
        # Read back through a new transaction: the change is already committed.
        conversation_id = next((e.conversation_id for e in events if e.conversation_id), None)
        state = desk.conversation(conversation_id).state if conversation_id else None
        seen.append((conversation_id, [e.type for e in events], state))

    with make_desk(tmp_path, plugin("jivocore_listener", jivocore_events_committed)) as desk:
        ann = desk.add_operator("Ann", presence="online")
        message = desk.receive("web", "visitor-1", "hello")
        desk.accept(message.conversation_id, ann.id)
        seen.clear()
        desk.close(message.conversation_id, ann.id)
        assert seen == [(message.conversation_id, ["closed"], State.CLOSED)]
        with pytest.raises(InvalidTransition):
            desk.close(message.conversation_id, ann.id)  # refused: nothing committed
        assert len(seen) == 1
        stored = [e for e in desk.events().items if e.conversation_id == message.conversation_id]
        assert stored[-1].type == "closed"


def test_hook_events_committed_gets_the_events_in_order(tmp_path):
    batches: list[list[Any]] = []

    @hookimpl
    def jivocore_events_committed(events):  # fewer arguments than the spec is fine
        batches.append(list(events))

    with make_desk(tmp_path, plugin("jivocore_listener", jivocore_events_committed)) as desk:
        message = desk.receive("web", "visitor-1", "hello")
        assert [[e.type for e in batch] for batch in batches] == [["client_added", "received"]]
        assert batches[0] == [e for e in desk.events().items if e.id in {b.id for b in batches[0]}]
        assert batches[0][1].conversation_id == message.conversation_id


# --- start-up checks: misspelt hooks, unknown arguments, blocking -------------------------------


def test_a_misspelt_hook_fails_at_start_up_naming_the_plugin(tmp_path):
    @hookimpl
    def jivocore_regster_channels(register):
        register(RecordingChannel("sms"))

    with pytest.raises(PluginError, match="jivocore_typo") as caught:
        make_desk(tmp_path, plugin("jivocore_typo", jivocore_regster_channels))
    assert caught.value.plugin == "jivocore_typo"
    assert "jivocore_regster_channels" in str(caught.value)


def test_an_argument_the_hook_does_not_have_fails_at_start_up_naming_the_plugin(tmp_path):
    @hookimpl
    def jivocore_register_channels(register, desk):
        register(RecordingChannel("sms"))

    with pytest.raises(PluginError, match="jivocore_greedy") as caught:
        make_desk(tmp_path, plugin("jivocore_greedy", jivocore_register_channels))
    assert caught.value.plugin == "jivocore_greedy"
    assert "desk" in str(caught.value)


def test_an_unmarked_function_is_not_an_implementation(tmp_path):
    """As docs/hooks.md says: without `@hookimpl`, a function is never called, whatever its
    name."""

    def jivocore_register_channels(register):
        register(RecordingChannel("sms"))

    with make_desk(tmp_path, plugin("jivocore_unmarked", jivocore_register_channels)) as desk:
        assert sorted(desk.channels) == ["web"]


def test_a_misspelt_command_hook_fails_when_the_command_line_is_built():
    @hookimpl
    def jivocore_register_command(register):
        pass

    with pytest.raises(PluginError, match="jivocore_typo"):
        make_cli(plugins=[plugin("jivocore_typo", jivocore_register_command)], entry_points=False)


def test_a_blocked_plugin_is_kept_out(tmp_path):
    calls = Calls()
    vetoer = veto_plugin("jivocore_grumpy", calls, lambda c: "no")
    with make_desk(tmp_path, vetoer, block=["jivocore_grumpy"]) as desk:
        assert desk.pm.is_blocked("jivocore_grumpy")
        assert vetoer not in desk.pm.get_plugins()
        ann = desk.add_operator("Ann", presence="online")
        message = desk.receive("web", "visitor-1", "hello")
        assert desk.accept(message.conversation_id, ann.id).state is State.ACTIVE
    assert calls.calls == []


def test_a_blocked_plugin_is_kept_out_even_when_installed(tmp_path):
    """Blocking the installed SQLite plugin by name leaves nothing to provide storage."""
    with pytest.raises(ConfigurationError):
        HelpDesk.open(str(tmp_path / "desk.db"), block=["jivocore_sqlite"])
    with HelpDesk.open(str(tmp_path / "desk.db")) as desk:
        assert desk.storage_plugin == "jivocore_sqlite"
