"""Hypothesis strategies for jivocore's entities: valid values of every core type.

Each strategy draws values an entity's validators accept and its invariants allow: UTC-aware
datetimes, string ids (time-ordered ones from `jivocore.new_id`, or plain text), text in any
Unicode including quotes and newlines (NUL only where asked for: the core refuses it, since
PostgreSQL cannot store it). Storage backends and plugins use them to check
that whatever the core can build, they store and give back unchanged::

    @given(strategies.conversations())
    def test_round_trip(conversation): ...
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from ..entities import (
    Author,
    Block,
    Client,
    ClientIdentity,
    Conversation,
    Delivery,
    Event,
    Ignore,
    Kind,
    Message,
    Operator,
    Outcome,
    Presence,
    Role,
    State,
)
from ..ids import new_id
from ..scheduler import Timer

__all__ = [
    "blocks",
    "client_identities",
    "clients",
    "conversations",
    "deliveries",
    "entities",
    "events",
    "ids",
    "ignores",
    "json_values",
    "messages",
    "operators",
    "texts",
    "timers",
    "utc_datetimes",
    "versions",
]

# Names for the things people type: quotes, newlines and the odd emoji on purpose.
_AWKWARD = ["", " ", "'", '"', "\n", "\r\n", "\\", "%", "_", "--", "Zoë", "😀", "\u202e"]


def utc_datetimes(
    min_value: datetime = datetime.min, max_value: datetime = datetime.max
) -> st.SearchStrategy[datetime]:
    """Timezone-aware UTC datetimes between two naive bounds, to the microsecond."""
    return st.datetimes(min_value=min_value, max_value=max_value, timezones=st.just(UTC))


def texts(
    *, min_size: int = 0, max_size: int | None = 40, nul: bool = False
) -> st.SearchStrategy[str]:
    """Any Unicode text (no lone surrogates), with quotes and newlines turning up often; with
    `nul`, NUL characters too (input the core must refuse)."""
    pieces = st.sampled_from([*_AWKWARD, *(["\x00"] if nul else [])])
    awkward = st.lists(pieces, max_size=4).map("".join)
    alphabet = st.characters(codec="utf-8", exclude_characters="" if nul else "\x00")
    anything = st.text(alphabet, min_size=min_size, max_size=max_size)
    return st.one_of(anything, awkward.filter(lambda s: len(s) >= min_size), anything)


def ids() -> st.SearchStrategy[str]:
    """Entity ids: time-ordered ones from `jivocore.new_id`, or any non-empty text."""
    ordered = st.builds(new_id, utc_datetimes(datetime(1970, 1, 1), datetime(2200, 1, 1)))
    return st.one_of(ordered, texts(min_size=1))


def versions() -> st.SearchStrategy[int]:
    """A stored version: 0 for never stored, then one more for every write."""
    return st.integers(min_value=0, max_value=2**53)


def json_values() -> st.SearchStrategy[Any]:
    """What an event's data may hold: JSON values with string keys (lists, not tuples)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        texts(),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(texts(), inner, max_size=4)
        ),
        max_leaves=10,
    )


def _after(
    start: datetime, *, at_most: timedelta = timedelta(days=400)
) -> st.SearchStrategy[datetime]:
    """A moment not before `start` (kept inside datetime's range)."""
    room = datetime.max.replace(tzinfo=UTC) - start
    return st.timedeltas(min_value=timedelta(0), max_value=min(at_most, room)).map(
        lambda delta: start + delta
    )


@st.composite
def operators(draw: st.DrawFn) -> Operator:
    """Operators of every role and presence, with or without a capacity."""
    return Operator(
        id=draw(ids()),
        version=draw(versions()),
        name=draw(texts()),
        email=draw(texts()),
        role=draw(st.sampled_from(Role)),
        presence=draw(st.sampled_from(Presence)),
        capacity=draw(st.none() | st.integers(min_value=0, max_value=2**31)),
        sees_all=draw(st.booleans()),
        created=draw(utc_datetimes()),
    )


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    """Blocks by an operator, indefinite or ending some time after they began."""
    at = draw(utc_datetimes())
    until = draw(st.none() | _after(at))
    return Block(by=draw(ids()), at=at, until=until)


@st.composite
def clients(draw: st.DrawFn) -> Client:
    """Clients with contacts, custom fields, tags, maybe a responsible operator and a block."""
    return Client(
        id=draw(ids()),
        version=draw(versions()),
        name=draw(texts()),
        emails=tuple(draw(st.lists(texts(), max_size=3))),
        phones=tuple(draw(st.lists(texts(), max_size=3))),
        status=draw(texts()),
        responsible_id=draw(st.none() | ids()),
        custom=draw(st.dictionaries(texts(), texts(), max_size=4)),
        block=draw(st.none() | blocks()),
        created=draw(utc_datetimes()),
        involved=frozenset(draw(st.lists(ids(), max_size=3))),
        tags=frozenset(draw(st.lists(texts(min_size=1), max_size=3))),
    )


@st.composite
def client_identities(draw: st.DrawFn) -> ClientIdentity:
    """Who a client is on a channel."""
    return ClientIdentity(
        id=draw(ids()),
        version=draw(versions()),
        channel=draw(texts(min_size=1)),
        external_id=draw(texts(min_size=1)),
        client_id=draw(ids()),
        created=draw(utc_datetimes()),
    )


@st.composite
def ignores(draw: st.DrawFn) -> Ignore:
    """An operator's ignore of an inbox conversation, until some moment."""
    return Ignore(operator_id=draw(ids()), until=draw(utc_datetimes()))


@st.composite
def conversations(draw: st.DrawFn, state: State | None = None) -> Conversation:
    """Conversations in any state (or the given one) that keep DESIGN section 4's invariants:
    an inbox one has no owner or participants, an active one's owner takes part, a closed one
    has neither and an outcome; created <= accepted <= closed."""
    state = draw(st.sampled_from(State)) if state is None else state
    created = draw(utc_datetimes(max_value=datetime(9000, 1, 1)))
    operator_ids = st.lists(ids(), max_size=4, unique=True)
    involved = set(draw(operator_ids))
    owner_id: str | None = None
    participants: set[str] = set()
    accepted: datetime | None = None
    closed: datetime | None = None
    outcome: Outcome | None = None
    episode = draw(st.integers(min_value=1, max_value=1000))
    if state is State.ACTIVE:
        owner_id = draw(ids())
        participants = {owner_id, *draw(operator_ids)}
        involved |= participants
        accepted = draw(_after(created))
    elif state is State.CLOSED:
        outcome = draw(st.sampled_from(Outcome))
        if outcome is Outcome.ANSWERED or draw(st.booleans()):
            accepted = draw(_after(created))
        closed = draw(_after(accepted or created))
    count = draw(st.integers(min_value=0 if state is State.CLOSED else 1, max_value=10**6))
    return Conversation(
        id=draw(ids()),
        version=draw(versions()),
        channel=draw(texts(min_size=1)),
        kind=draw(st.sampled_from(Kind)),
        client_id=draw(ids()),
        state=state,
        owner_id=owner_id,
        participants=frozenset(participants),
        involved=frozenset(involved),
        ignores=tuple(draw(st.lists(ignores(), max_size=3))) if state is State.INBOX else (),
        created=created,
        accepted=accepted,
        closed=closed,
        outcome=outcome,
        episode=episode,
        message_count=count,
        last_message_at=draw(_after(created)) if count else None,
        tags=frozenset(draw(st.lists(texts(min_size=1), max_size=3))),
    )


@st.composite
def messages(draw: st.DrawFn) -> Message:
    """Messages by a client, an operator or the system, any text, maybe a channel's id."""
    author = draw(st.sampled_from(Author))
    return Message(
        id=draw(ids()),
        version=draw(versions()),
        conversation_id=draw(ids()),
        seq=draw(st.integers(min_value=1, max_value=2**31)),
        channel=draw(texts(min_size=1)),
        author=author,
        author_id=None if author is Author.SYSTEM else draw(ids()),
        text=draw(texts(min_size=1, max_size=200)),
        at=draw(utc_datetimes()),
        episode=draw(st.integers(min_value=1, max_value=1000)),
        external_id=draw(st.none() | texts(min_size=1)),
    )


@st.composite
def events(draw: st.DrawFn) -> Event:
    """Events of any type with JSON data."""
    return Event(
        id=draw(ids()),
        version=draw(versions()),
        type=draw(st.sampled_from(["received", "accepted", "closed"]) | texts(min_size=1)),
        at=draw(utc_datetimes()),
        actor_id=draw(st.none() | ids()),
        conversation_id=draw(st.none() | ids()),
        client_id=draw(st.none() | ids()),
        data=draw(st.dictionaries(texts(), json_values(), max_size=5)),
    )


@st.composite
def deliveries(draw: st.DrawFn) -> Delivery:
    """Outbox rows: pending, sent or dead, after some attempts."""
    status = draw(st.sampled_from(["pending", "sent", "dead"]))
    return Delivery(
        id=draw(ids()),
        version=draw(versions()),
        message_id=draw(ids()),
        conversation_id=draw(ids()),
        channel=draw(texts(min_size=1)),
        status=status,
        attempts=draw(st.integers(min_value=0 if status == "pending" else 1, max_value=100)),
        due=draw(utc_datetimes()),
        error=draw(st.none() | texts(min_size=1)),
    )


@st.composite
def timers(draw: st.DrawFn) -> Timer:
    """The scheduler's timers: due at some moment, maybe retried later after failures."""
    due = draw(utc_datetimes())
    attempts = draw(st.integers(min_value=0, max_value=100))
    return Timer(
        id=draw(ids()),
        version=draw(versions()),
        kind=draw(st.sampled_from(["task_due", "block_expired"]) | texts(min_size=1)),
        key=draw(st.none() | texts(min_size=1)),
        due=due,
        run_at=draw(_after(due)) if attempts else due,
        data=draw(st.dictionaries(texts(), json_values(), max_size=4)),
        attempts=attempts,
        error=draw(texts(min_size=1)) if attempts else None,
        created=draw(utc_datetimes()),
    )


def entities() -> st.SearchStrategy[Any]:
    """Any one core entity or value."""
    return st.one_of(
        operators(),
        blocks(),
        clients(),
        client_identities(),
        ignores(),
        conversations(),
        messages(),
        events(),
        deliveries(),
        timers(),
    )
