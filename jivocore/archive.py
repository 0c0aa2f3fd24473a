"""The archive (the All tab): closed conversations' transcripts as search documents, the
filters of the archive, and the streaming of a period's conversations for reports.

A conversation's transcript (its messages' text, in order) is stored as its search document
(`jivocore.storage.Document`, dated by its close) in batches: `index_pending` finds the closed
conversations whose transcript is missing or older than their close and writes them. Search
then runs on the documents with the conversation's own columns as filters, in one indexed query
on each backend; a period also bounds the documents' dates, so only its transcripts are walked.
docs/archive.md explains it for hosts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from .entities import Client, Conversation, Event, Kind, Message, Outcome, State
from .errors import ConfigurationError, ValidationError
from .statistics import ConversationStatistics, statistics
from .storage import (
    RELEVANCE_WINDOW,
    Document,
    DocumentSearch,
    HasAll,
    In,
    Page,
    Range,
    Transaction,
    Where,
)

__all__ = [
    "MARGIN",
    "archive_filter",
    "documents",
    "index",
    "index_pending",
    "period_statistics",
    "search",
    "transcript",
]

MARGIN = timedelta(minutes=5)
"""How far before the newest indexed close `index_pending` looks again: a close whose
transaction read the clock earlier but committed after an indexing pass is still found."""

_BATCH = 200


def documents(tx: Transaction) -> DocumentSearch:
    """The transaction's search documents, or ConfigurationError if its backend has none."""
    if not callable(getattr(tx, "search_documents", None)):
        raise ConfigurationError(
            f"the storage backend ({type(tx).__module__}) keeps no search documents "
            "(jivocore.storage.DocumentSearch): the archive cannot be searched"
        )
    return cast(DocumentSearch, tx)


def transcript(tx: Transaction, conversation: Conversation) -> Document:
    """The conversation's search document: its messages' text in order, one per line, dated
    by its close."""
    if conversation.closed is None:
        raise ValidationError(f"conversation {conversation.id} is not closed", id=conversation.id)
    texts = [
        m.text for m in tx.select(Message, {"conversation_id": conversation.id}, order=("seq",))
    ]
    return Document(id=conversation.id, text="\n".join(texts), at=conversation.closed)


def index(tx: Transaction, conversations: Iterable[Conversation]) -> int:
    """Write the transcripts of these closed conversations (a close, in its own transaction,
    can call this with the conversation it closed); returns how many were written."""
    return documents(tx).put_documents(
        Conversation, (transcript(tx, c) for c in conversations if c.state is State.CLOSED)
    )


def index_pending(tx: Transaction, *, limit: int = 500, margin: timedelta = MARGIN) -> int:
    """Index up to `limit` closed conversations whose transcript is missing or predates their
    latest close, oldest close first; returns how many. Reads only the conversations closed
    since `margin` before the newest indexed close (all of them on the first run: the
    backfill, `limit` at a time)."""
    docs = documents(tx)
    newest = docs.newest_document(Conversation)
    where: dict[str, Any] = {"state": State.CLOSED}
    if newest is not None:
        where["closed"] = Range(ge=newest - margin)
    pending: list[Conversation] = []
    batch: list[Conversation] = []
    for conversation in tx.select(Conversation, where, order=("closed",)):
        batch.append(conversation)
        if len(batch) == _BATCH:
            pending += _stale(docs, batch)
            batch = []
            if len(pending) >= limit:
                break
    pending += _stale(docs, batch)
    return index(tx, pending[:limit])


def _stale(docs: DocumentSearch, batch: Sequence[Conversation]) -> list[Conversation]:
    dates = docs.document_dates(Conversation, [c.id for c in batch])
    return [c for c in batch if dates.get(c.id) != c.closed]


def search(
    tx: Transaction,
    text: str,
    query: Where,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    by: str = "date",
    after: str | None = None,
    limit: int = 50,
    window: int = RELEVANCE_WINDOW,
) -> Page[Conversation]:
    """One page of the closed conversations matching `query` (from `archive_filter`) whose
    transcript holds `text`. The period is also given to the search as the documents' dates (a
    transcript is dated by the close it was indexed at), so the backend walks only the
    transcripts of ``[since, until)`` rather than testing every match's close."""
    # Only with a period: a backend written before `at` existed still answers the rest.
    period = {} if since is None and until is None else {"at": Range(ge=since, lt=until)}
    return documents(tx).search_documents(
        Conversation, text, query, by=by, after=after, limit=limit, window=window, **period
    )


def _values(value: Any) -> Any:
    """A filter of one value or several (In)."""
    if isinstance(value, str | Kind | Outcome) or value is None:
        return value
    return In(value)


def archive_filter(
    tx: Transaction,
    *,
    now: datetime,
    where: Where | None = None,
    viewer: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    operator: str | None = None,
    channel: str | Iterable[str] | None = None,
    kind: Kind | str | Iterable[Kind | str] | None = None,
    outcome: Outcome | str | Iterable[Outcome | str] | None = None,
    tags: Iterable[str] = (),
    client_id: str | None = None,
    blocked: bool = False,
) -> dict[str, Any] | None:
    """The archive's filters as one storage filter on conversations, or None when nothing can
    match. `viewer`: the operator whose visibility applies (None: everyone's conversations)."""
    query: dict[str, Any] = {**(where or {}), "state": State.CLOSED}
    involved = {o for o in (viewer, operator) if o is not None}
    if involved:
        if "involved" in query:
            raise ValidationError("filter by operator=...; `involved` is the visibility rule")
        query["involved"] = HasAll(involved)
    if since is not None or until is not None:
        query["closed"] = Range(ge=since, lt=until)
    for field, value in (("channel", channel), ("kind", kind), ("outcome", outcome)):
        if value is not None:
            query[field] = _values(value)
    tags = frozenset(tags)
    if tags:
        query["tags"] = HasAll(tags)
    if client_id is not None:
        query["client_id"] = client_id
    if blocked:
        ids = blocked_clients(tx, now)
        if client_id is not None:
            ids = [i for i in ids if i == client_id]
        if not ids:
            return None
        query["client_id"] = In(ids)
    return query


def blocked_clients(tx: Transaction, now: datetime) -> list[str]:
    """The clients blocked at `now`, found through the `client_blocked` events (few, and
    indexed by type) rather than a scan of every client."""
    seen: set[str] = set()
    blocked: list[str] = []
    for event in tx.select(Event, {"type": "client_blocked"}, order=("at",)):
        if event.client_id is None or event.client_id in seen:
            continue
        seen.add(event.client_id)
        client = tx.find(Client, event.client_id)
        if client is not None and client.blocked(now):
            blocked.append(client.id)
    return blocked


def _statistics_of(tx: Transaction, batch: Sequence[Conversation]) -> list[ConversationStatistics]:
    if not batch:
        return []
    events: dict[str, list[Event]] = {c.id: [] for c in batch}
    for event in tx.select(Event, {"conversation_id": In(list(events))}, order=("id",)):
        if event.conversation_id is not None:
            events[event.conversation_id].append(event)
    return [statistics(c, events[c.id]) for c in batch]


def period_statistics(
    tx: Transaction, since: datetime, until: datetime
) -> Iterator[ConversationStatistics]:
    """The statistics of every conversation with an episode that began in ``[since, until)``:
    those created in it, then those reopened in it; streamed, `_BATCH` conversations at a time."""
    batch: list[Conversation] = []
    created = {"state": In(list(State)), "created": Range(ge=since, lt=until)}
    for conversation in tx.select(Conversation, created, order=("created",)):
        batch.append(conversation)
        if len(batch) == _BATCH:
            yield from _statistics_of(tx, batch)
            batch = []
    yield from _statistics_of(tx, batch)
    batch, done = [], set()
    joins = {"type": "joined", "at": Range(ge=since, lt=until)}
    for event in tx.select(Event, joins, order=("at",)):
        conversation_id = event.conversation_id
        if conversation_id is None or conversation_id in done:
            continue
        done.add(conversation_id)
        reopened = tx.find(Conversation, conversation_id)
        if reopened is None or since <= reopened.created < until:
            continue  # counted with those created in the period
        batch.append(reopened)
        if len(batch) == _BATCH:
            yield from _statistics_of(tx, batch)
            batch = []
    yield from _statistics_of(tx, batch)
