"""Conversation statistics (jivocore.statistics) against a straightforward recomputation: a
generated history is played on a desk driven by the fake clock while a model notes, in plain
Python, what each episode's figures must be; then every conversation's statistics must equal
the model's. Reopened episodes (join from the archive), transfers, invitations, blocks and
ratings included."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import jivocore_sqlite
from jivocore import (
    Conversation,
    HelpDesk,
    InvalidTransition,
    Kind,
    Outcome,
    PermissionDenied,
    State,
    ValidationError,
)
from jivocore.csvsafe import neutralise, safe_row
from jivocore.statistics import EpisodeStatistics, percentile, statistics
from jivocore.testing import FakeClock, RecordingChannel, channel_plugin

OPERATORS = ("ann", "bob", "cat")
CLIENTS = ("v1", "v2")


@contextmanager
def new_desk() -> Iterator[tuple[HelpDesk, FakeClock, dict[str, str]]]:
    clock = FakeClock()
    with HelpDesk(
        plugins=[jivocore_sqlite, channel_plugin(RecordingChannel("web"))], clock=clock
    ) as desk:
        ids = {name: desk.add_operator(name, presence="online").id for name in OPERATORS}
        ids["boss"] = desk.add_operator("boss", role="manager", presence="online").id
        yield desk, clock, ids


@attrs.define
class Episode:
    """What the model notes of one episode, as it happens."""

    episode: int
    reopened: bool
    started: datetime
    accepted: datetime | None = None
    accepted_by: str | None = None
    ended: datetime | None = None
    outcome: Outcome | None = None
    first_message: datetime | None = None
    first_reply: datetime | None = None
    responder: str | None = None
    client_messages: int = 0
    operator_messages: int = 0
    operators: set[str] = attrs.Factory(set)
    transfers: int = 0
    rating: int | None = None

    def expected(self) -> EpisodeStatistics:
        return EpisodeStatistics(
            episode=self.episode,
            reopened=self.reopened,
            started=self.started,
            accepted=self.accepted,
            accepted_by=self.accepted_by,
            ended=self.ended,
            outcome=self.outcome,
            missed=self.outcome is Outcome.MISSED,
            wait=None if self.reopened or self.accepted is None else self.accepted - self.started,
            first_message=self.first_message,
            first_response=None
            if self.first_reply is None or self.first_message is None
            else self.first_reply - self.first_message,
            first_responder=self.responder,
            duration=None if self.ended is None else self.ended - self.started,
            client_messages=self.client_messages,
            operator_messages=self.operator_messages,
            operators=frozenset(self.operators),
            transfers=self.transfers,
            rating=self.rating,
        )


_tick = st.tuples(st.just("tick"), st.integers(0, 900))
_step = st.one_of(
    _tick,
    st.tuples(st.just("write"), st.sampled_from(CLIENTS)),
    st.tuples(
        st.sampled_from(
            ["accept", "reply", "transfer", "invite", "join", "close", "leave", "rate"]
        ),
        st.sampled_from(CLIENTS),
        st.sampled_from(OPERATORS),
    ),
    st.tuples(st.sampled_from(["client_left", "block"]), st.sampled_from(CLIENTS)),
)


@st.composite
def _life(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """A plausible life, so reopens happen: write, accept, talk, close, join, talk, close;
    each step may be left out, and ticks come between."""
    client = draw(st.sampled_from(CLIENTS))

    def op() -> str:
        return draw(st.sampled_from(OPERATORS))

    first = op()
    script = [
        ("write", client),
        ("accept", client, first),
        ("write", client),
        ("reply", client, op()),
        ("transfer", client, op()),
        ("reply", client, op()),
        ("close", client, op()),
        ("join", client, first),
        ("reply", client, op()),
        ("write", client),
        ("reply", client, op()),
        ("rate", client, op()),
        ("close", client, op()),
    ]
    steps: list[tuple[Any, ...]] = []
    for step in script:
        if draw(st.integers(0, 9)):
            steps.append(step)
        steps.append(draw(_tick))
    return steps


_steps = st.lists(st.one_of(_step.map(lambda s: [s]), _life()), min_size=1, max_size=8).map(
    lambda chunks: [step for chunk in chunks for step in chunk]
)


def play(
    desk: HelpDesk, clock: FakeClock, ids: dict[str, str], steps: list[tuple[Any, ...]]
) -> dict[str, list[Episode]]:
    """Play `steps` on the desk (skipping those the lifecycle refuses) and note the model."""
    model: dict[str, list[Episode]] = {}
    latest: dict[str, str] = {}  # client -> their latest conversation

    def conversation(client: str) -> Conversation | None:
        return desk.conversation(latest[client]) if client in latest else None

    for step in steps:
        kind = step[0]
        now = clock.now()
        if kind == "tick":
            clock.advance(step[1])
            continue
        client = step[1]
        c = conversation(client)
        episodes = model.get(c.id, []) if c else []
        current = episodes[-1] if episodes else None
        if kind == "write":
            message = desk.receive("web", client, f"hello from {client}")
            if c is None or c.id != message.conversation_id:
                latest[client] = message.conversation_id
                current = Episode(episode=1, reopened=False, started=now)
                model[message.conversation_id] = [current]
            assert current is not None
            current.client_messages += 1
            current.first_message = current.first_message or now
            continue
        if c is None or current is None:
            continue
        if kind == "client_left" and c.state is State.INBOX:
            desk.client_left(c.id)
            current.ended, current.outcome = now, Outcome.MISSED
        elif kind == "block" and c.open:
            desk.block(c.client_id, ids["boss"])
            desk.unblock(c.client_id, ids["boss"])
            current.ended, current.outcome = now, Outcome.BLOCKED
        elif kind in ("client_left", "block"):
            continue
        else:
            name = step[2]
            op = ids[name]
            if kind == "accept" and c.state is State.INBOX:
                desk.accept(c.id, op)
                current.accepted, current.accepted_by = now, op
                current.operators.add(op)
            elif kind == "reply" and c.state is State.ACTIVE and op in c.participants:
                desk.reply(c.id, op, "at your service")
                current.operator_messages += 1
                current.operators.add(op)
                if current.first_message is not None and current.first_reply is None:
                    current.first_reply, current.responder = now, op
            elif kind == "transfer" and c.state is State.ACTIVE and op != c.owner_id:
                assert c.owner_id is not None
                desk.transfer(c.id, c.owner_id, op)
                current.transfers += 1
                current.operators.add(op)
            elif kind == "invite" and c.state is State.ACTIVE and op not in c.participants:
                assert c.owner_id is not None
                desk.invite(c.id, c.owner_id, op)
                current.operators.add(op)
            elif kind == "join" and c.state is State.CLOSED and op in c.involved:
                desk.join(c.id, op)
                episodes.append(
                    Episode(
                        episode=current.episode + 1,
                        reopened=True,
                        started=now,
                        accepted=now,
                        accepted_by=op,
                        operators={op},
                    )
                )
            elif kind == "join" and c.state is State.ACTIVE and op in c.involved - c.participants:
                desk.join(c.id, op)
                current.operators.add(op)
            elif (
                kind == "leave" and c.state is State.ACTIVE and op in c.participants - {c.owner_id}
            ):
                desk.leave(c.id, op)
            elif kind == "close" and c.state is State.ACTIVE:
                assert c.owner_id is not None
                desk.close(c.id, c.owner_id)
                current.ended, current.outcome = now, Outcome.ANSWERED
            elif kind == "rate" and c.accepted is not None:
                rating = 1 + len(steps) % 5
                desk.rate(c.id, rating)
                current.rating = rating
    return model


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=_steps)
def test_statistics_agree_with_a_recomputation(steps: list[tuple[Any, ...]]) -> None:
    with new_desk() as (desk, clock, ids):
        model = play(desk, clock, ids, steps)
        event(f"episodes: {max((len(e) for e in model.values()), default=0)}")
        for conversation_id, episodes in model.items():
            stats = desk.statistics(conversation_id)
            assert stats.episodes == tuple(e.expected() for e in episodes)
            c = desk.conversation(conversation_id)
            assert (stats.channel, stats.kind, stats.client_id) == ("web", Kind.CHAT, c.client_id)
            # The pure function over the log gives the same, and ignores others' events.
            log = desk.events(limit=10_000).items
            assert statistics(c, log) == stats


def test_a_reopen_never_changes_the_first_episodes_figures() -> None:
    with new_desk() as (desk, clock, ids):
        ann, bob = ids["ann"], ids["bob"]
        cid = desk.receive("web", "v1", "my order is late").conversation_id
        clock.advance(30)
        desk.accept(cid, ann)
        clock.advance(15)
        desk.reply(cid, ann, "looking")
        clock.advance(60)
        desk.close(cid, ann)
        before = desk.statistics(cid).episodes[0]
        assert before.wait == timedelta(seconds=30)
        assert before.first_response == timedelta(seconds=45)
        assert before.duration == timedelta(seconds=105)
        clock.advance(3600)
        desk.join(cid, ann)
        clock.advance(5)
        desk.reply(cid, ann, "it shipped")  # before the client says anything: no response
        clock.advance(100)
        desk.receive("web", "v1", "thanks!")
        clock.advance(7)
        desk.transfer(cid, ann, bob)
        desk.reply(cid, bob, "anything else?")
        desk.rate(cid, 5)
        desk.close(cid, bob)
        first, second = desk.statistics(cid).episodes
        assert first == before
        assert second.reopened and second.wait is None and second.accepted_by == ann
        assert second.first_response == timedelta(seconds=7)
        assert second.first_responder == bob
        assert (second.client_messages, second.operator_messages) == (1, 2)
        assert second.operators == {ann, bob} and second.transfers == 1
        assert (second.rating, first.rating) == (5, None)
        assert second.outcome is Outcome.ANSWERED


def test_a_call_counts_as_a_call() -> None:
    with new_desk() as (desk, clock, ids):
        cid = desk.receive("web", "+4912345", "incoming call", kind="call").conversation_id
        clock.advance(12)
        desk.accept(cid, ids["ann"])
        clock.advance(300)
        desk.close(cid, ids["ann"])
        stats = desk.statistics(cid)
        assert stats.kind is Kind.CALL
        assert stats.episodes[0].wait == timedelta(seconds=12)
        assert stats.episodes[0].duration == timedelta(seconds=312)


def test_rating_is_refused_before_an_accept_and_out_of_range() -> None:
    with new_desk() as (desk, _clock, ids):
        cid = desk.receive("web", "v1", "hi").conversation_id
        with pytest.raises(InvalidTransition):
            desk.rate(cid, 4)
        desk.accept(cid, ids["ann"])
        for bad in (0, 6, 2.5, True, "5"):
            with pytest.raises(ValidationError):
                desk.rate(cid, bad)  # type: ignore[arg-type]
        desk.rate(cid, 2)
        desk.rate(cid, 4)  # the last rating stands
        assert desk.statistics(cid).episodes[0].rating == 4


def test_statistics_respect_visibility() -> None:
    with new_desk() as (desk, _clock, ids):
        cid = desk.receive("web", "v1", "hi").conversation_id
        desk.accept(cid, ids["ann"])
        assert desk.statistics(cid, operator_id=ids["ann"]).episodes
        assert desk.statistics(cid, operator_id=ids["boss"]).episodes
        with pytest.raises(PermissionDenied):
            desk.statistics(cid, operator_id=ids["bob"])


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=30), st.floats(0, 1))
def test_percentile_interpolates_between_ranks(values: list[float], q: float) -> None:
    import statistics as py

    result = percentile(values, q)
    assert result is not None
    assert min(values) - 1e-6 <= result <= max(values) + 1e-6
    if len(values) > 1:
        deciles = py.quantiles(values, n=10, method="inclusive")
        assert percentile(values, 0.9) == pytest.approx(deciles[8])
    assert percentile(values, 0.5) == pytest.approx(py.median(values))
    assert percentile([], q) is None


def test_csv_cells_that_could_be_formulas_are_quoted() -> None:
    for text in ("=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "=cmd|' /C calc'!A0"):
        assert neutralise(text) == "'" + text
    for text in ("plain", "", "1=1", " =x", "'=already"):
        assert neutralise(text) == text
    assert safe_row([None, -5, 2.5, True, "-x"]) == ["", "-5", "2.5", "true", "'-x"]
    import csv

    out = io.StringIO()
    csv.writer(out).writerow(safe_row(["=HYPERLINK()", "ok"]))
    assert out.getvalue().startswith("'=HYPERLINK()")
