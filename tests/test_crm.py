"""Client CRM: every client filter equals a brute-force Python filter over generated clients,
tags, deals and tasks, on SQLite and PostgreSQL; merging loses nothing; statuses, responsible
operator, custom fields, permissions, `today` and the CLI."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import attrs
import pytest
from click.testing import CliRunner
from crmkit import BACKENDS, crm_desk, need_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jivocore_crm
import jivocore_csv
import jivocore_deals
import jivocore_tags
import jivocore_tasks
from jivocore import (
    Client,
    ClientIdentity,
    Conversation,
    FakeClock,
    InvalidTransition,
    Message,
    PermissionDenied,
    ValidationError,
)
from jivocore.cli import make_cli
from jivocore_crm import ClientFilter, find_clients, merge_clients
from jivocore_deals import Deal, DealStatus
from jivocore_postgres import tokens
from jivocore_tasks import Task

TAGS = ["vip", "red", "green", "blue"]
NAMES = ["Maria Lopez", "Ann Smith", "Li Wei", "José Núñez", "", "maria-ann"]
EMAILS = ["", "maria@example.com", "li@shop.cn"]
PHONES = ["", "+1 555 0100", "555 0199"]
TEXTS = ["maria", "example", "555", "0100", "nunez", "wei ann", "nobody"]
ORDERS = [("-created",), ("name",), ("status", "-created"), ("next_task_due",), ("-open_deals",)]

client_specs = st.fixed_dictionaries(
    {
        "name": st.sampled_from(NAMES),
        "email": st.sampled_from(EMAILS),
        "phone": st.sampled_from(PHONES),
        "status": st.sampled_from(jivocore_crm.DEFAULT_STATUSES),
        "responsible": st.sampled_from([None, "ann", "bob"]),
        "tags": st.frozensets(st.sampled_from(TAGS), max_size=3),
        "deals": st.lists(st.sampled_from(["open", "won", "lost"]), max_size=3),
        "tasks": st.lists(st.tuples(st.integers(-30, 30), st.booleans()), max_size=3),
    }
)
# Each condition is absent more often than not, so combined filters still match something.
filters = st.fixed_dictionaries(
    {
        "viewer": st.sampled_from(["boss", "boss", "ann", "bob"]),
        "responsible_id": st.sampled_from([None, None, "ann", "bob"]),
        "statuses": st.sampled_from([frozenset(), frozenset(), {"new", "lead"}, {"customer"}]),
        "tags": st.sampled_from([frozenset(), frozenset(), {"vip"}, {"red", "green"}]),
        "all_tags": st.booleans(),
        "open_deals": st.sampled_from([False, False, True]),
        "tasks_due": st.sampled_from([False, False, True]),
        "text": st.sampled_from(["", "", "", *TEXTS]),
        "order": st.sampled_from(ORDERS),
        "limit": st.integers(1, 4),
    }
)


def build(desk: Any, specs: list[dict[str, Any]]) -> dict[str, str]:
    """The generated clients, through the plugins' own commands; returns operator ids."""
    ops = {
        "ann": desk.add_operator("Ann").id,
        "bob": desk.add_operator("Bob").id,
        "boss": desk.add_operator("Boss", role="manager").id,
    }
    now = desk.clock.now()
    for spec in specs:
        responsible = ops[spec["responsible"]] if spec["responsible"] else None
        client = desk.add_client(
            spec["name"],
            emails=[spec["email"]] if spec["email"] else [],
            phones=[spec["phone"]] if spec["phone"] else [],
            status=spec["status"],
            responsible_id=responsible,
        )
        for tag in sorted(spec["tags"]):
            jivocore_tags.tag_client(desk, client.id, tag, ops["boss"])
        for status in spec["deals"]:
            deal = jivocore_deals.create_deal(
                desk, client.id, ops["boss"], "deal", amount="10.5", responsible_id=responsible
            )
            if status != "open":
                jivocore_deals.set_status(desk, deal.id, ops["boss"], status)
        for hours, done in spec["tasks"]:
            task = jivocore_tasks.create_task(
                desk,
                client.id,
                ops["boss"],
                "task",
                now + timedelta(hours=hours),
                assignee_id=responsible,
            )
            if done:
                jivocore_tasks.complete_task(desk, task.id, ops["boss"])
    return ops


def words(client: Client) -> list[str]:
    return tokens(" ".join([client.name, json.dumps(client.emails), json.dumps(client.phones)]))


def brute(desk: Any, ops: dict[str, str], f: dict[str, Any]) -> list[Client]:
    """The filter, in plain Python over every client, deal and task."""
    with desk.reading() as tx:
        clients = list(tx.select(Client))
        deals = list(tx.select(Deal))
        tasks = list(tx.select(Task))
    viewer = desk.operator(ops[f["viewer"]])
    end = jivocore_crm.day_bounds(desk, desk.clock.now())[1]
    responsible = ops[f["responsible_id"]] if f["responsible_id"] else None
    chosen = []
    for c in clients:
        mine_open = [d for d in deals if d.client_id == c.id and d.status is DealStatus.OPEN]
        due = [t for t in tasks if t.client_id == c.id and not t.done and t.due < end]
        if not desk.sees_client(viewer, c):
            continue
        if responsible and c.responsible_id != responsible:
            continue
        if f["statuses"] and c.status not in f["statuses"]:
            continue
        if f["tags"] and not (f["tags"] <= c.tags if f["all_tags"] else f["tags"] & c.tags):
            continue
        if f["open_deals"] and not mine_open:
            continue
        if f["tasks_due"] and not due:
            continue
        if f["text"] and not all(
            " ".join(tokens(w)) in " ".join(words(c)) and set(tokens(w)) <= set(words(c))
            for w in f["text"].split()
        ):
            continue
        chosen.append(c)
    order = [(o.lstrip("-"), o.startswith("-")) for o in f["order"]]
    order.append(("id", order[-1][1]))
    for name, desc in reversed(order):
        chosen.sort(
            key=lambda c, n=name: (
                getattr(c, n) is not None,
                desk.converter.unstructure(getattr(c, n)) if getattr(c, n) is not None else 0,
            ),
            reverse=desc,
        )
    return chosen


def walk(desk: Any, ops: dict[str, str], f: dict[str, Any]) -> tuple[list[Client], int]:
    """Every page of the filtered listing, following the cursors."""
    found: list[Client] = []
    after = None
    counts = set()
    while True:
        listing = find_clients(
            desk,
            ops[f["viewer"]],
            ClientFilter(
                responsible_id=ops[f["responsible_id"]] if f["responsible_id"] else None,
                statuses=f["statuses"],
                tags=f["tags"],
                all_tags=f["all_tags"],
                open_deals=f["open_deals"],
                tasks_due=f["tasks_due"],
                text=f["text"],
            ),
            order=f["order"],
            after=after,
            limit=f["limit"],
        )
        assert listing.exact
        counts.add(listing.count)
        found += listing.items
        after = listing.next
        if after is None:
            break
    assert len(counts) == 1
    return found, counts.pop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_client_filter_equals_a_brute_force_filter(backend, tmp_path_factory):
    need_backend(backend)

    @settings(
        max_examples=50 if backend == "sqlite" else 15,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        specs=st.lists(client_specs, min_size=2, max_size=8),
        queries=st.lists(filters, min_size=1, max_size=6),
        later=st.integers(0, 20),
    )
    def check(specs, queries, later):
        clock = FakeClock()
        with crm_desk(backend, tmp_path_factory.mktemp("crm"), clock) as desk:
            ops = build(desk, specs)
            clock.advance(timedelta(hours=later))
            for f in queries:
                expected = brute(desk, ops, f)
                found, count = walk(desk, ops, f)
                assert [c.id for c in found] == [c.id for c in expected], f
                assert count == len(expected)

    check()


# --- merging ------------------------------------------------------------------------------------


def holdings(desk: Any, client_id: str) -> dict[str, Any]:
    with desk.reading() as tx:
        conversations = [c.id for c in tx.select(Conversation, {"client_id": client_id})]
        return {
            "identities": sorted(i.id for i in tx.select(ClientIdentity, {"client_id": client_id})),
            "conversations": sorted(conversations),
            "messages": sorted(
                m.id for cid in conversations for m in tx.select(Message, {"conversation_id": cid})
            ),
            "deals": sorted(d.id for d in tx.select(Deal, {"client_id": client_id})),
            "tasks": sorted(t.id for t in tx.select(Task, {"client_id": client_id})),
            "tags": tx.get(Client, client_id).tags,
        }


@pytest.mark.parametrize("backend", BACKENDS)
def test_merging_moves_everything_to_the_survivor(backend, tmp_path_factory):
    need_backend(backend)

    @settings(max_examples=15 if backend == "sqlite" else 6, deadline=None)
    @given(
        sides=st.tuples(
            *[
                st.fixed_dictionaries(
                    {
                        "visitors": st.lists(
                            st.sampled_from(["a", "b", "c"]), max_size=3, unique=True
                        ),
                        "messages": st.integers(1, 3),
                        "closed": st.booleans(),
                        "deals": st.integers(0, 2),
                        "tasks": st.integers(0, 2),
                        "tags": st.frozensets(st.sampled_from(TAGS), max_size=2),
                    }
                )
            ]
            * 2
        )
    )
    def check(sides):
        clock = FakeClock()
        with crm_desk(backend, tmp_path_factory.mktemp("merge"), clock) as desk:
            boss = desk.add_operator("Boss", role="manager", presence="online").id
            ids = []
            for n, side in enumerate(sides):
                client = desk.add_client(f"client {n}")
                for k, visitor in enumerate(side["visitors"]):
                    message = None
                    for i in range(side["messages"]):
                        message = desk.receive("web", f"{n}-{visitor}", f"hello {i}")
                    assert message is not None
                    # Only the last visitor's chat may stay open: one open chat per channel.
                    if side["closed"] or k < len(side["visitors"]) - 1:
                        desk.accept(message.conversation_id, boss)
                        desk.close(message.conversation_id, boss)
                    # All visitors of one side are one client: move them to it.
                    desk.run(lambda work, m=message, c=client: _rehome(work, m, c.id))
                for _ in range(side["deals"]):
                    jivocore_deals.create_deal(desk, client.id, boss, "deal")
                for _ in range(side["tasks"]):
                    jivocore_tasks.create_task(desk, client.id, boss, "t", clock.now())
                for tag in side["tags"]:
                    jivocore_tags.tag_client(desk, client.id, tag, boss)
                ids.append(client.id)
            before = [holdings(desk, i) for i in ids]
            survivor, merged = ids
            opened = [{c.channel for c in _open(desk, i)} for i in ids]
            if opened[0] & opened[1]:
                with pytest.raises(InvalidTransition):
                    merge_clients(desk, survivor, merged, boss)
                return
            merge_clients(desk, survivor, merged, boss)
            after = holdings(desk, survivor)
            for key in ("identities", "conversations", "messages", "deals", "tasks"):
                assert after[key] == sorted(before[0][key] + before[1][key]), key
            assert after["tags"] == before[0]["tags"] | before[1]["tags"]
            with desk.reading() as tx:
                assert tx.find(Client, merged) is None
                assert tx.count(Message, {"author_id": merged}) == 0
                client = tx.get(Client, survivor)
                assert client.open_deals == len(after["deals"])
            [event] = desk.events({"type": "clients_merged"}).items
            assert event.data["merged_id"] == merged

    check()


def _rehome(work: Any, message: Message, client_id: str) -> None:
    conversation = work.tx.get(Conversation, message.conversation_id)
    old = conversation.client_id
    if old == client_id:
        return
    for identity in list(work.tx.select(ClientIdentity, {"client_id": old})):
        work.tx.update(attrs.evolve(identity, client_id=client_id))
    work.tx.update(attrs.evolve(conversation, client_id=client_id))
    for m in list(work.tx.select(Message, {"conversation_id": conversation.id})):
        work.tx.update(attrs.evolve(m, author_id=client_id))
    work.tx.delete(work.tx.get(Client, old))


def _open(desk: Any, client_id: str) -> list[Conversation]:
    with desk.reading() as tx:
        return [c for c in tx.select(Conversation, {"client_id": client_id}) if c.open]


# --- statuses, responsible, today, the command line -------------------------------------------


def test_statuses_responsible_custom_fields_and_today(tmp_path):
    clock = FakeClock()
    with crm_desk(
        "sqlite", tmp_path, clock, client_statuses=("prospect", "client"), crm_stale_days=2
    ) as desk:
        ann = desk.add_operator("Ann", presence="online")
        boss = desk.add_operator("Boss", role="manager")
        client = jivocore_crm.add_client(desk, boss.id, "Maria", emails=["m@example.com"])
        assert client.status == "prospect" and client.responsible_id == boss.id
        with pytest.raises(ValidationError, match="prospect, client"):
            jivocore_crm.edit_client(desk, client.id, boss.id, status="lead")
        with pytest.raises(PermissionDenied):
            jivocore_crm.edit_client(desk, client.id, ann.id, name="x")
        edited = jivocore_crm.edit_client(
            desk, client.id, boss.id, responsible_id=ann.id, custom={"plan": "gold"}
        )
        assert edited.responsible_id == ann.id and edited.custom == {"plan": "gold"}
        edited = jivocore_crm.edit_client(desk, client.id, ann.id, custom={"plan": None})
        assert edited.custom == {}
        deal = jivocore_deals.create_deal(desk, client.id, ann.id, "plan", amount=100)
        task = jivocore_tasks.create_task(desk, client.id, ann.id, "call", clock.now())
        later = jivocore_tasks.create_task(
            desk, client.id, ann.id, "later", clock.now() + timedelta(days=3)
        )
        work = jivocore_crm.today(desk, ann.id)
        assert [t.id for t in work.tasks] == [task.id]
        assert work.deals == ()  # touched today
        assert [c.id for c in work.clients] == [client.id]
        clock.advance(timedelta(days=3))
        work = jivocore_crm.today(desk, ann.id)
        assert [t.id for t in work.tasks] == [task.id, later.id]
        assert [d.id for d in work.deals] == [deal.id]
        assert work.clients == ()  # assigned three days ago


def test_the_command_line(tmp_path, monkeypatch):
    path = tmp_path / "desk.db"
    plugins = [jivocore_crm, jivocore_tags, jivocore_deals, jivocore_tasks]
    from jivocore import HelpDesk

    with HelpDesk.open(str(path), plugins=plugins) as desk:
        boss = desk.add_operator("Boss", role="manager")
        client = desk.add_client("Maria Lopez", responsible_id=boss.id)
        jivocore_tags.tag_client(desk, client.id, "vip", boss.id)
        jivocore_deals.create_deal(desk, client.id, boss.id, "Annual", amount="99.90")
        jivocore_tasks.create_task(desk, client.id, boss.id, "Call", desk.clock.now())
    cli = make_cli(plugins, entry_points=False)
    runner = CliRunner()
    base = ["--db", str(path)]
    out = runner.invoke(cli, [*base, "clients", "--operator", boss.id, "--tag", "vip"])
    assert out.exit_code == 0, out.output
    assert "Maria Lopez" in out.output and "-- 1 in all" in out.output
    out = runner.invoke(
        cli,
        [*base, "clients", "--operator", boss.id, "--open-deals", "--tasks-due", "--text", "lopez"],
    )
    assert "-- 1 in all" in out.output, out.output
    out = runner.invoke(cli, [*base, "deals", "--operator", boss.id, "--status", "open"])
    assert "99.90" in out.output, out.output
    out = runner.invoke(cli, [*base, "tasks", "--operator", boss.id, "--due", "today"])
    assert "Call" in out.output, out.output
    out = runner.invoke(cli, [*base, "today", "--operator", boss.id])
    assert "Tasks due today or overdue (1)" in out.output, out.output
    out = runner.invoke(cli, [*base, "clients", "--operator", "nobody"])
    assert out.exit_code == 1 and "NotFoundError" in out.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_counts_stop_at_crm_count_limit(backend, tmp_path):
    need_backend(backend)
    with crm_desk(backend, tmp_path, crm_count_limit=3) as desk:
        boss = desk.add_operator("Boss", role="manager").id
        clients = [
            jivocore_crm.add_client(desk, boss, f"c{n}", status="lead" if n < 2 else "new")
            for n in range(5)
        ]
        for client in clients[:4]:
            jivocore_deals.create_deal(desk, client.id, boss, "deal")
            jivocore_tasks.create_task(desk, client.id, boss, "call", desk.clock.now())

        def every(flt: ClientFilter) -> tuple[list[str], int, bool]:
            seen, after = [], None
            while True:
                listing = find_clients(desk, boss, flt, after=after, limit=2)
                seen += [c.id for c in listing.items]
                if listing.next is None:
                    return seen, listing.count, listing.exact
                after = listing.next

        # The count stops at the limit and says so; the pages still list every match.
        assert every(ClientFilter()) == ([c.id for c in reversed(clients)], 3, False)
        assert every(ClientFilter(statuses={"lead"})) == ([clients[1].id, clients[0].id], 2, True)
        deals = jivocore_deals.find_deals(desk, boss)
        assert (deals.count, deals.exact, len(deals.items)) == (3, False, 4)
        tasks = jivocore_tasks.find_tasks(desk, boss, client_id=clients[0].id)
        assert (tasks.count, tasks.exact) == (1, True)
        tasks = jivocore_tasks.find_tasks(desk, boss)
        assert (tasks.count, tasks.exact, len(tasks.items)) == (3, False, 4)


def test_today_lists_whom_responsible_set_gave_to_the_operator(tmp_path):
    clock = FakeClock()
    with crm_desk("sqlite", tmp_path, clock) as desk:
        ann = desk.add_operator("Ann", presence="online").id
        bob = desk.add_operator("Bob", presence="online").id
        boss = desk.add_operator("Boss", role="manager").id

        def newly(operator: str) -> list[str]:
            return [c.id for c in jivocore_crm.today(desk, operator).clients]

        # A first accept gives the client to the operator, now.
        message = desk.receive("web", "visitor-1", "hello")
        desk.accept(message.conversation_id, ann)
        first = desk.conversation(message.conversation_id).client_id
        assert desk.client(first).responsible_at == clock.now()
        clock.advance(timedelta(hours=1))
        second = jivocore_crm.add_client(desk, boss, "Second").id  # added by hand: Boss's
        assert newly(boss) == [second]
        jivocore_crm.edit_client(desk, second, boss, responsible_id=ann)
        assert newly(ann) == [second, first]  # newest first
        # Given to another: theirs, no longer Ann's; taken away: nobody's.
        jivocore_crm.edit_client(desk, first, boss, responsible_id=bob)
        assert (newly(ann), newly(bob)) == ([second], [first])
        jivocore_crm.edit_client(desk, first, boss, responsible_id=None)
        assert desk.client(first).responsible_at is None and newly(bob) == []
        # A merge keeps the responsible operator with the time they were given the client.
        merged = merge_clients(desk, first, second, boss)
        assert (merged.responsible_id, merged.responsible_at) == (ann, clock.now())
        assert newly(ann) == [first]
        clock.advance(timedelta(hours=24, seconds=1))
        assert newly(ann) == []
        # Every other way a client gets a responsible operator counts too.
        clock.advance(timedelta(hours=1))
        edited = attrs.evolve(desk.client(first), responsible_id=bob)
        assert desk.update_client(edited).responsible_at == clock.now()
        assert newly(bob) == [first]
        third = desk.add_client("Third", responsible_id=bob).id
        assert newly(bob) == [third, first]
        table = tmp_path / "fourth.csv"
        table.write_text(f"name,responsible\nFourth,{bob}\n", encoding="utf-8")
        jivocore_csv.import_clients(desk, table)
        fourth = next(c.id for c in desk.clients().items if c.name == "Fourth")
        assert newly(bob) == [fourth, third, first]
