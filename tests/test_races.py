"""Two operators accept the same inbox conversation at the same moment: exactly one gets it.

1,000 races on one SQLite file, run two ways: one desk shared by two threads (the SQLite
backend gives each thread its own connection) and two desks on the same file.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from jivocore import Conversation, HelpDesk, InvalidTransition, Operator, State
from jivocore.testing import FakeClock, RecordingChannel, channel_plugin

RACES = 1_000


def _race(
    desks: tuple[HelpDesk, HelpDesk], operators: tuple[Operator, Operator], ids: list[str]
) -> list[list[object]]:
    """Each side accepts every conversation in turn; a barrier starts both sides of each race
    together. Returns, per side, what each accept gave: the conversation or the error."""
    barrier = threading.Barrier(2)
    outcomes: list[list[object]] = [[None] * len(ids), [None] * len(ids)]

    def side(n: int) -> None:
        desk, operator = desks[n], operators[n]
        for i, conversation_id in enumerate(ids):
            try:
                barrier.wait(timeout=30)
            except threading.BrokenBarrierError as exc:
                outcomes[n][i] = exc
                return
            try:
                outcomes[n][i] = desk.accept(conversation_id, operator.id)
            except Exception as exc:  # every outcome is judged below, on the test's thread
                outcomes[n][i] = exc
        # A side that failed to reach a barrier breaks it, so the other side never hangs.

    threads = [threading.Thread(target=side, args=(n,), name=f"accept-{n}") for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        if thread.is_alive():
            barrier.abort()
            thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "a racing thread never finished"
    return outcomes


def _open_inbox(desk: HelpDesk, count: int) -> list[str]:
    return [desk.receive("web", f"visitor-{i}", "hello?").conversation_id for i in range(count)]


def _check(
    desk: HelpDesk,
    operators: tuple[Operator, Operator],
    ids: list[str],
    outcomes: list[list[object]],
) -> Counter[str]:
    """Each race had one winner and one loser told who won; the database agrees."""
    wins: Counter[str] = Counter()
    for i, conversation_id in enumerate(ids):
        results = (outcomes[0][i], outcomes[1][i])
        won = [n for n in (0, 1) if isinstance(results[n], Conversation)]
        assert len(won) == 1, f"race {i} on {conversation_id}: {results!r}"
        winner, accepted, loser = operators[won[0]], results[won[0]], results[1 - won[0]]
        wins[winner.name] += 1

        assert isinstance(accepted, Conversation)
        assert (accepted.id, accepted.state, accepted.owner_id) == (
            conversation_id,
            State.ACTIVE,
            winner.id,
        )

        assert type(loser) is InvalidTransition, f"race {i}: the loser got {loser!r}"
        assert loser.owner_id == winner.id
        assert loser.conversation_id == conversation_id
        assert winner.name in str(loser), f"race {i}: {loser} does not name {winner.name}"
        assert conversation_id in str(loser)

        stored = desk.conversation(conversation_id)
        assert stored.state is State.ACTIVE
        assert stored.owner_id == winner.id
        assert stored.participants == frozenset({winner.id})
        accepted_events = desk.events({"type": "accepted", "conversation_id": conversation_id})
        assert [e.actor_id for e in accepted_events.items] == [winner.id], conversation_id
    return wins


@pytest.fixture
def operators(desk: HelpDesk) -> tuple[Operator, Operator]:
    return (
        desk.add_operator("Ann", presence="online"),
        desk.add_operator("Bob", presence="online"),
    )


@pytest.fixture
def second_desk(desk: HelpDesk, clock: FakeClock, channel: RecordingChannel) -> Iterator[HelpDesk]:
    with HelpDesk.open(
        str(desk.settings["database"]), clock=clock, plugins=[channel_plugin(channel)]
    ) as other:
        yield other


def test_one_desk_shared_by_two_threads(desk, operators):
    ids = _open_inbox(desk, RACES)
    outcomes = _race((desk, desk), operators, ids)
    wins = _check(desk, operators, ids, outcomes)
    assert sum(wins.values()) == RACES
    assert all(wins[op.name] for op in operators), f"one side never won, so never raced: {wins}"


def test_two_desks_on_one_file(desk, second_desk, operators):
    ids = _open_inbox(desk, RACES)
    outcomes = _race((desk, second_desk), operators, ids)
    wins = _check(second_desk, operators, ids, outcomes)
    assert sum(wins.values()) == RACES
    assert all(wins[op.name] for op in operators), f"one side never won, so never raced: {wins}"
