"""The CRM's listings of deals and tasks and the daily work list equal a brute-force model of
docs/crm.md's rules, in plain Python over a Hypothesis-generated history of clients, deals and
tasks driven by a fake clock, on SQLite and PostgreSQL: `find_deals` and `find_tasks` (every
filter, visibility, order, every page by cursor, the count), `overdue` and `today`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest
from crmkit import BACKENDS, crm_desk, every_page, in_listing_order, need_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jivocore_crm
import jivocore_deals
import jivocore_tasks
from jivocore import Client, FakeClock, HelpDesk, InvalidTransition, PermissionDenied
from jivocore_deals import Deal, DealStatus
from jivocore_tasks import Task

OPERATORS = ["ann", "bob", "cat"]  # ordinary operators: they see only their clients
VIEWERS = [*OPERATORS, "boss", "seer"]  # a manager, and an operator granted sees_all
STAGES = jivocore_deals.DEFAULT_PIPELINE
ZONES = ["UTC", "Asia/Kolkata", "Pacific/Kiritimati", "America/Los_Angeles", "America/Havana"]
# Where the clock starts: FakeClock's default, or the eves of 2026's clock changes in Los Angeles
# (at 2:00) and Havana (at midnight: March 8 has none, November 1 two).
STARTS = [None, datetime(2026, 3, 7, 20, tzinfo=UTC), datetime(2026, 10, 31, 20, tzinfo=UTC)]
# Between two steps; on a half-hour grid but for one, so boundaries are met exactly.
MINUTES = [0, 0, 1, 30, 60, 60, 5 * 60, 24 * 60, 3 * 24 * 60]

someone = st.sampled_from([None, *OPERATORS])  # None: the acting manager's default, or nobody
nth = st.integers(0, 9)  # the nth client, deal or task (modulo how many there are)
# When a task is due: some half hours from now, or a midnight in crm_timezone (where "today" ends).
dues = st.one_of(
    st.tuples(st.just("half hours"), st.integers(-48, 48)),
    st.tuples(st.just("midnights"), st.integers(-1, 7)),
)
# When the listings are read: some minutes after the history, or exactly when the nth undone task
# falls due (or a microsecond before: on the eve of a task due at midnight, "today" ends at its
# due time), the nth open deal turns stale, or the nth assignment stops being new (of those yet
# to come).
boundaries = st.tuples(st.sampled_from(["due", "eve", "stale", "not new"]), nth)
when_read = st.one_of(boundaries, boundaries, st.sampled_from([0, 1, 60, 24 * 60, 7 * 24 * 60]))


def after_a_while(actions: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[int, Any]]:
    """An action, some minutes after the one before it."""
    return st.tuples(st.sampled_from(MINUTES), actions)


# A desk's history, all done by the manager "boss" (who sees every client): clients, deals and
# tasks first, then steps that add and change deals, tasks and who is responsible for a client.
new_client = st.tuples(st.just("client"), st.sampled_from(["added", "chat"]), someone)
new_deal = st.tuples(st.just("deal"), nth, st.sampled_from(STAGES), someone)
new_task = st.tuples(st.just("task"), nth, dues, someone)
# Mostly the first clients, so one is given back and forth.
new_responsible = st.tuples(
    st.just("responsible"), st.integers(0, 2), st.sampled_from([None, "ann", "bob"])
)
change = st.one_of(
    new_client,
    new_deal,
    new_task,
    new_responsible,
    new_responsible,
    new_responsible,
    st.tuples(st.just("stage"), nth, st.sampled_from(STAGES)),
    st.tuples(st.just("deal_responsible"), nth, st.sampled_from(OPERATORS)),
    st.tuples(st.just("status"), nth, st.sampled_from(list(DealStatus))),
    st.tuples(st.just("due"), nth, dues),
    st.tuples(st.just("assignee"), nth, st.sampled_from(OPERATORS)),
    st.tuples(st.just("done"), nth),
    st.tuples(st.just("delete"), nth),
)
histories = st.tuples(
    st.lists(after_a_while(new_client), min_size=2, max_size=5),
    st.lists(after_a_while(st.one_of(new_deal, new_task)), min_size=2, max_size=10),
    st.lists(after_a_while(change), min_size=5, max_size=25),
).map(lambda parts: [step for part in parts for step in part])
DEAL_ORDERS = [
    ("-updated",),
    ("created",),
    ("stage", "-updated"),
    ("status", "created"),
    ("-closed",),
    ("responsible_id", "-created"),
]
TASK_ORDERS = [("due",), ("-due",), ("assignee_id", "due"), ("done", "-created"), ("-done_at",)]
# Each condition is absent more often than not, so combined filters still match something.
viewers = st.sampled_from(["boss", "seer", *VIEWERS])
clients_or_all = st.sampled_from([None, None, None, 0, 1])
deal_queries = st.fixed_dictionaries(
    {
        "viewer": viewers,
        "client": clients_or_all,
        "status": st.sampled_from([None, None, None, *DealStatus]),
        "stages": st.sampled_from([(), (), (), ("new",), ("proposal", "negotiation")]),
        "responsible": st.sampled_from([None, None, None, *OPERATORS]),
        "order": st.sampled_from(DEAL_ORDERS),
        "limit": st.integers(1, 3),
    }
)
task_queries = st.fixed_dictionaries(
    {
        "viewer": viewers,
        "client": clients_or_all,
        "assignee": st.sampled_from([None, None, None, *OPERATORS]),
        "done": st.sampled_from([False, False, True, None]),
        "due": st.sampled_from([None, None, "overdue", "today"]),
        "order": st.sampled_from(TASK_ORDERS),
        "limit": st.integers(1, 3),
    }
)
desk_settings = st.fixed_dictionaries(
    {
        "crm_timezone": st.sampled_from(ZONES),
        "crm_stale_days": st.sampled_from([1, 7]),
        "crm_new_hours": st.sampled_from([5, 24, 1000]),
    }
)


def end_of_today(now: datetime, zone: str, *, days: int = 0) -> datetime:
    """The midnight (in UTC) after the day of `now` in `zone`, where "today" ends; or `days`
    days later. UTC, since a local time in a fold or gap never equals one in another zone."""
    local = now.astimezone(ZoneInfo(zone)).date() + timedelta(days=1 + days)
    return datetime.combine(local, time(), tzinfo=ZoneInfo(zone)).astimezone(UTC)


def when(desk: HelpDesk, now: datetime, due: tuple[str, int]) -> datetime:
    unit, n = due
    if unit == "half hours":
        return now + n * timedelta(minutes=30)
    return end_of_today(now, desk.settings["crm_timezone"], days=n)


@attrs.define
class Model:
    """What docs/crm.md says the desk holds after the generated history."""

    ops: dict[str, str]
    clients: list[str] = attrs.Factory(list)  # in the order they came
    responsible: dict[str, str | None] = attrs.Factory(dict)
    involved: dict[str, set[str]] = attrs.Factory(dict)  # who may see each client
    assigned: list[tuple[datetime, str, str]] = attrs.Factory(list)  # responsible_set: at, c, op
    deals: dict[str, Deal] = attrs.Factory(dict)
    tasks: dict[str, Task] = attrs.Factory(dict)

    def sees(self, viewer: str, client_id: str) -> bool:
        return viewer in ("boss", "seer") or self.ops[viewer] in self.involved[client_id]

    def involve(self, client_id: str, operator_id: str) -> None:
        self.involved[client_id].add(operator_id)

    def make_responsible(self, client_id: str, operator_id: str | None, at: datetime) -> None:
        self.responsible[client_id] = operator_id
        if operator_id is not None:
            self.involve(client_id, operator_id)
            self.assigned.append((at, client_id, operator_id))


def play(desk: HelpDesk, clock: FakeClock, history: list[tuple[int, tuple[Any, ...]]]) -> Model:
    """Run the generated history through the plugins' commands, keeping the model beside it."""
    ops = {name: desk.add_operator(name, presence="online").id for name in OPERATORS}
    ops["boss"] = desk.add_operator("Boss", role="manager").id
    ops["seer"] = desk.add_operator("Seer", sees_all=True).id
    boss = ops["boss"]
    model = Model(ops)

    def of(name: str | None) -> str | None:
        return ops[name] if name else None

    for minutes, (action, *args) in history:
        now = clock.advance(timedelta(minutes=minutes))
        if action == "client":
            origin, responsible = args
            if origin == "added":
                client = desk.add_client("c", responsible_id=of(responsible))
                model.involved[client.id] = set()
                model.responsible[client.id] = None
                if responsible:  # a client added with a responsible operator is newly theirs
                    model.make_responsible(client.id, ops[responsible], now)
                client_id = client.id
            else:  # a visitor's chat: its first accept makes the operator responsible
                message = desk.receive("web", f"visitor {len(model.clients)}", "hello")
                client_id = desk.conversation(message.conversation_id).client_id
                model.involved[client_id] = set()
                model.responsible[client_id] = None
                if responsible:
                    desk.accept(message.conversation_id, ops[responsible])
                    model.make_responsible(client_id, ops[responsible], now)
            model.clients.append(client_id)
        elif action in ("responsible", "deal", "task") and model.clients:
            client_id = model.clients[args[0] % len(model.clients)]
            if action == "responsible":
                new = of(args[1])
                jivocore_crm.edit_client(desk, client_id, boss, responsible_id=new)
                if new != model.responsible[client_id]:
                    model.make_responsible(client_id, new, now)
            elif action == "deal":
                deal = jivocore_deals.create_deal(
                    desk, client_id, boss, "deal", stage=args[1], responsible_id=of(args[2])
                )
                assert (deal.status, deal.stage, deal.created, deal.updated, deal.closed) == (
                    DealStatus.OPEN,
                    args[1],
                    now,
                    now,
                    None,
                )
                assert deal.responsible_id == (of(args[2]) or boss)
                model.involve(client_id, deal.responsible_id)
                model.deals[deal.id] = deal
            else:
                due = when(desk, now, args[1])
                task = jivocore_tasks.create_task(
                    desk, client_id, boss, "task", due, assignee_id=of(args[2])
                )
                assert (task.due, task.done, task.created) == (due, False, now)
                assert task.assignee_id == (of(args[2]) or boss)
                model.involve(client_id, task.assignee_id)
                model.tasks[task.id] = task
        elif action in ("stage", "deal_responsible", "status") and model.deals:
            deal = list(model.deals.values())[args[0] % len(model.deals)]
            if action == "status":
                if deal.status is args[1]:
                    with pytest.raises(InvalidTransition):
                        jivocore_deals.set_status(desk, deal.id, boss, args[1])
                    continue
                saved = jivocore_deals.set_status(desk, deal.id, boss, args[1])
                closed = None if args[1] is DealStatus.OPEN else now
                assert (saved.status, saved.updated, saved.closed) == (args[1], now, closed)
            else:
                field = "stage" if action == "stage" else "responsible_id"
                value = args[1] if action == "stage" else ops[args[1]]
                if deal.status is not DealStatus.OPEN:  # a won or lost deal is reopened first
                    with pytest.raises(InvalidTransition):
                        jivocore_deals.update_deal(desk, deal.id, boss, **{field: value})
                    continue
                saved = jivocore_deals.update_deal(desk, deal.id, boss, **{field: value})
                assert (getattr(saved, field), saved.updated) == (value, now)
                if action == "deal_responsible":
                    model.involve(deal.client_id, value)
            model.deals[deal.id] = saved
        elif action in ("due", "assignee", "done", "delete") and model.tasks:
            task = list(model.tasks.values())[args[0] % len(model.tasks)]
            if action == "delete":
                jivocore_tasks.delete_task(desk, task.id, boss)
                del model.tasks[task.id]
                continue
            if action == "due":
                due = when(desk, now, args[1])
                saved = jivocore_tasks.update_task(desk, task.id, boss, due=due)
                assert saved.due == due
            elif action == "assignee":
                saved = jivocore_tasks.update_task(desk, task.id, boss, assignee_id=ops[args[1]])
                assert saved.assignee_id == ops[args[1]]
                model.involve(task.client_id, ops[args[1]])
            else:
                saved = jivocore_tasks.complete_task(desk, task.id, boss, done=not task.done)
                assert (saved.done, saved.done_at) == (not task.done, None if task.done else now)
            model.tasks[task.id] = saved
    with desk.reading() as tx:  # the model's view of each client is the desk's
        for client in tx.select(Client):
            assert client.responsible_id == model.responsible[client.id]
            assert client.involved == model.involved[client.id]
        assert {d.id: d for d in tx.select(Deal)} == model.deals
        assert {t.id: t for t in tx.select(Task)} == model.tasks
    return model


def wait(model: Model, now: datetime, moment: Any, config: dict[str, Any]) -> timedelta:
    """How long after `now` the listings are read (see `when_read`)."""
    if isinstance(moment, int):
        return timedelta(minutes=moment)
    what, n = moment
    dues = [t.due for t in model.tasks.values() if not t.done]
    times = {
        "due": dues,
        "eve": [due - timedelta(microseconds=1) for due in dues],
        "stale": [
            d.updated + timedelta(days=config["crm_stale_days"])
            for d in model.deals.values()
            if d.status is DealStatus.OPEN
        ],
        "not new": [at + timedelta(hours=config["crm_new_hours"]) for at, _, _ in model.assigned],
    }[what]
    coming = sorted(t - now for t in times if t >= now)
    return coming[n % len(coming)] if coming else timedelta(0)


def client_of(model: Model, n: int | None) -> str | None:
    return None if n is None or not model.clients else model.clients[n % len(model.clients)]


def expected_deals(model: Model, q: dict[str, Any]) -> list[Deal]:
    client_id = client_of(model, q["client"])
    deals = [
        d
        for d in model.deals.values()
        if model.sees(q["viewer"], d.client_id)
        and (client_id is None or d.client_id == client_id)
        and (q["status"] is None or d.status is q["status"])
        and (not q["stages"] or d.stage in q["stages"])
        and (q["responsible"] is None or d.responsible_id == model.ops[q["responsible"]])
    ]
    return in_listing_order(deals, q["order"])


def expected_tasks(model: Model, q: dict[str, Any], now: datetime, zone: str) -> list[Task]:
    client_id = client_of(model, q["client"])
    before = {None: None, "overdue": now, "today": end_of_today(now, zone)}[q["due"]]
    tasks = [
        t
        for t in model.tasks.values()
        if model.sees(q["viewer"], t.client_id)
        and (client_id is None or t.client_id == client_id)
        and (q["assignee"] is None or t.assignee_id == model.ops[q["assignee"]])
        and (q["done"] is None or t.done is q["done"])
        and (before is None or t.due < before)
    ]
    return in_listing_order(tasks, q["order"])


def check_listing(
    model: Model, q: dict[str, Any], expected: list[Any], listing: Callable[..., Any]
) -> None:
    """Every page of the listing, by cursor, is `expected`; a client the viewer may not see is
    refused."""
    client_id = client_of(model, q["client"])
    if client_id is not None and not model.sees(q["viewer"], client_id):
        with pytest.raises(PermissionDenied):
            listing(None)
        return
    found, count = every_page(listing)
    assert [x.id for x in found] == [x.id for x in expected], q
    assert count == len(expected), q


def check_first(found: Any, expected: list[Any], key: Callable[[Any], Any], limit: int) -> None:
    """`found` is the first `limit` of `expected` (sorted by `key`), whichever way ties fall."""
    assert [key(x) for x in found] == [key(x) for x in expected[:limit]]
    assert len({x.id for x in found}) == len(found)
    assert {x.id for x in found} <= {x.id for x in expected}


def check_listings(
    desk: HelpDesk,
    model: Model,
    config: dict[str, Any],
    deal_qs: list[dict[str, Any]],
    task_qs: list[dict[str, Any]],
    limit: int,
) -> None:
    """Every listing, now, equals the model's answer."""
    now, ops = desk.clock.now(), model.ops
    for q in deal_qs:
        check_listing(
            model,
            q,
            expected_deals(model, q),
            lambda after, q=q: jivocore_deals.find_deals(
                desk,
                ops[q["viewer"]],
                client_id=client_of(model, q["client"]),
                status=q["status"],
                stages=q["stages"],
                responsible_id=ops[q["responsible"]] if q["responsible"] else None,
                order=q["order"],
                after=after,
                limit=q["limit"],
            ),
        )
    # The drawn queries, and each viewer's undone tasks due (a boundary may decide them).
    plain = {"client": None, "assignee": None, "done": False, "order": ("due",), "limit": 50}
    due = [{**plain, "viewer": v, "due": d} for v in VIEWERS for d in ("overdue", "today")]
    for q in task_qs + due:
        check_listing(
            model,
            q,
            expected_tasks(model, q, now, config["crm_timezone"]),
            lambda after, q=q: jivocore_tasks.find_tasks(
                desk,
                ops[q["viewer"]],
                client_id=client_of(model, q["client"]),
                assignee_id=ops[q["assignee"]] if q["assignee"] else None,
                done=q["done"],
                due=q["due"],
                order=q["order"],
                after=after,
                limit=q["limit"],
            ),
        )
    end = end_of_today(now, config["crm_timezone"])
    stale = now - timedelta(days=config["crm_stale_days"])
    since = now - timedelta(hours=config["crm_new_hours"])
    for name in VIEWERS:
        op = ops[name]
        mine = [t for t in model.tasks.values() if t.assignee_id == op and not t.done]
        # overdue: due before now, most overdue first
        late = sorted((t for t in mine if t.due < now), key=lambda t: t.due)
        page = jivocore_tasks.overdue(desk, op, limit=limit)
        check_first(page.items, late, lambda t: t.due, limit)
        assert page.count == len(late)
        assert (page.next is None) == (len(late) <= limit)
        # today: tasks due before the end of today, oldest first
        today = sorted((t for t in mine if t.due < end), key=lambda t: t.due)
        # open deals untouched for crm_stale_days, longest untouched first
        idle = sorted(
            (
                d
                for d in model.deals.values()
                if d.responsible_id == op and d.status is DealStatus.OPEN and d.updated <= stale
            ),
            key=lambda d: d.updated,
        )
        # clients made theirs in the last crm_new_hours and still theirs, newest first
        assigned: dict[str, datetime] = {}
        for at, client_id, to in model.assigned:
            if to == op and at >= since and model.responsible[client_id] == op:
                assigned[client_id] = max(at, assigned.get(client_id, at))
        new = sorted(assigned, key=lambda c: assigned[c], reverse=True)
        for n in (limit, 50):
            work = jivocore_crm.today(desk, op, limit=n)
            check_first(work.tasks, today, lambda t: t.due, n)
            check_first(work.deals, idle, lambda d: d.updated, n)
            assert {c.id for c in work.clients} <= set(new)
            assert [assigned[c.id] for c in work.clients] == [assigned[c] for c in new[:n]]
            assert len({c.id for c in work.clients}) == len(work.clients)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deal_task_and_today_listings_equal_a_brute_force_model(backend, tmp_path_factory):
    need_backend(backend)

    @settings(
        max_examples=100 if backend == "sqlite" else 25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        history=histories,
        start=st.sampled_from(STARTS),
        config=desk_settings,
        moments=st.lists(when_read, min_size=1, max_size=3),
        deal_qs=st.lists(deal_queries, min_size=1, max_size=4),
        task_qs=st.lists(task_queries, min_size=1, max_size=4),
        limit=st.integers(1, 4),
    )
    def check(history, start, config, moments, deal_qs, task_qs, limit):
        clock = FakeClock(start)
        with crm_desk(backend, tmp_path_factory.mktemp("listings"), clock, **config) as desk:
            model = play(desk, clock, history)
            for moment in moments:
                clock.advance(wait(model, clock.now(), moment, config))
                check_listings(desk, model, config, deal_qs, task_qs, limit)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_today_ends_at_local_midnight_on_the_days_clocks_change(backend, tmp_path_factory):
    """A day of 23 or 25 hours in `crm_timezone` ends at its midnight: tasks due at the
    midnights about a clock change, and a microsecond either side, are due today or not as the
    model says, at instants all through those days."""
    need_backend(backend)

    @settings(max_examples=30 if backend == "sqlite" else 10, deadline=None)
    @given(
        zone=st.sampled_from(["America/Havana", "America/Los_Angeles"]),
        day=st.sampled_from([datetime(2026, 3, 7, tzinfo=UTC), datetime(2026, 10, 31, tzinfo=UTC)]),
        half_hours=st.integers(0, 4 * 48),
    )
    def check(zone, day, half_hours):
        clock = FakeClock(day + half_hours * timedelta(minutes=30))
        now = clock.now()
        with crm_desk(backend, tmp_path_factory.mktemp("dst"), clock, crm_timezone=zone) as desk:
            ann = desk.add_operator("Ann").id
            client = desk.add_client("c", responsible_id=ann)
            dues = [
                end_of_today(now, zone, days=days) + timedelta(microseconds=micros)
                for days in (-1, 0, 1, 2)
                for micros in (-1, 0, 1)
            ]
            for due in dues:
                jivocore_tasks.create_task(desk, client.id, ann, "task", due)
            today = sorted(due for due in dues if due < end_of_today(now, zone))
            listing = jivocore_tasks.find_tasks(desk, ann, due="today")
            assert [t.due for t in listing.items] == today
            assert [t.due for t in jivocore_crm.today(desk, ann).tasks] == today

    check()
