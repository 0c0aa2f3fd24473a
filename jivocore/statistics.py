"""Statistics of conversations computed from their event log, and reports over a period.

Everything here is a pure function of a conversation and its events (the append-only log in
log order), so it can be property-tested against a recomputation from generated histories; the
desk only loads the events (`HelpDesk.statistics`, `HelpDesk.report`). docs/archive.md defines
every figure precisely.

A conversation reopened by a join is split into **episodes**, each with its own figures: the
first episode begins with the client's first message, a later one with the join that reopened
the conversation, so a reopen never changes an earlier episode's first response time.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import IO, Any

import attrs

from .csvsafe import safe_row
from .entities import Conversation, Event, Kind, Outcome

__all__ = [
    "CALL_MISSED",
    "REPORT_COLUMNS",
    "ConversationStatistics",
    "EpisodeStatistics",
    "Figures",
    "Report",
    "percentile",
    "statistics",
    "write_report_csv",
]

_ENDINGS = {"closed": Outcome.ANSWERED, "missed": Outcome.MISSED, "blocked": Outcome.BLOCKED}

CALL_MISSED = "call_missed"
"""The event a phone adapter records (``work.record(CALL_MISSED, conversation=...)``) when a
call rang out unanswered but stays in the inbox as a callback request: it marks the episode
missed without closing it."""


@attrs.frozen(kw_only=True)
class EpisodeStatistics:
    """The figures of one episode of a conversation. Durations are None when they do not apply
    (yet): no wait for a reopened episode, no first response before the first reply."""

    episode: int
    reopened: bool  # begun by a join from the archive (episode 2 and later)
    started: datetime  # the client's first message, or the reopening join
    accepted: datetime | None  # the accept (the join, for a reopened episode)
    accepted_by: str | None
    ended: datetime | None  # closed, missed or blocked; None while it is open
    outcome: Outcome | None  # None while it is open
    missed: bool  # ended missed, or a call marked missed (a callback request)
    wait: timedelta | None  # started -> accepted; first episode only
    first_message: datetime | None  # the client's first message in the episode
    first_response: timedelta | None  # first_message -> the first operator reply after it
    first_responder: str | None  # who gave that reply
    duration: timedelta | None  # started -> ended
    client_messages: int
    operator_messages: int
    operators: frozenset[str]  # everyone who accepted, replied, was given, invited or joined
    transfers: int
    rating: int | None  # the client's last rating of this episode


@attrs.frozen(kw_only=True)
class ConversationStatistics:
    """A conversation's figures: what it is, and one `EpisodeStatistics` per episode."""

    conversation_id: str
    channel: str
    kind: Kind
    client_id: str
    episodes: tuple[EpisodeStatistics, ...]

    @property
    def first(self) -> EpisodeStatistics | None:
        """The first episode: the client's request as it first came in."""
        return self.episodes[0] if self.episodes else None

    @property
    def last(self) -> EpisodeStatistics | None:
        return self.episodes[-1] if self.episodes else None


@attrs.define
class _Episode:
    """An episode while the log is read (mutable scratch; frozen into EpisodeStatistics)."""

    episode: int
    reopened: bool
    started: datetime
    accepted: datetime | None = None
    accepted_by: str | None = None
    ended: datetime | None = None
    outcome: Outcome | None = None
    call_missed: bool = False
    first_message: datetime | None = None
    first_reply: datetime | None = None
    first_responder: str | None = None
    client_messages: int = 0
    operator_messages: int = 0
    operators: set[str] = attrs.Factory(set)
    transfers: int = 0
    rating: int | None = None

    def freeze(self) -> EpisodeStatistics:
        def span(a: datetime | None, b: datetime | None) -> timedelta | None:
            return None if a is None or b is None else b - a

        return EpisodeStatistics(
            episode=self.episode,
            reopened=self.reopened,
            started=self.started,
            accepted=self.accepted,
            accepted_by=self.accepted_by,
            ended=self.ended,
            outcome=self.outcome,
            missed=self.outcome is Outcome.MISSED or self.call_missed,
            wait=None if self.reopened else span(self.started, self.accepted),
            first_message=self.first_message,
            first_response=span(self.first_message, self.first_reply),
            first_responder=self.first_responder,
            duration=span(self.started, self.ended),
            client_messages=self.client_messages,
            operator_messages=self.operator_messages,
            operators=frozenset(self.operators),
            transfers=self.transfers,
            rating=self.rating,
        )


def _episode_of(event: Event, default: int) -> int:
    value = event.data.get("episode")
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def statistics(conversation: Conversation, events: Iterable[Event]) -> ConversationStatistics:
    """The conversation's figures from its events, given in log order (by id). Events of other
    conversations, and types statistics do not use, are skipped."""
    episodes: list[_Episode] = []
    current: _Episode | None = None
    for event in events:
        if event.conversation_id != conversation.id:
            continue
        kind = event.type
        if kind == "received":
            if current is None:
                current = _Episode(episode=_episode_of(event, 1), reopened=False, started=event.at)
                episodes.append(current)
            current.client_messages += 1
            if current.first_message is None:
                current.first_message = event.at
            continue
        if kind == "joined" and current is not None and _episode_of(event, 0) > current.episode:
            current = _Episode(
                episode=_episode_of(event, 0),
                reopened=True,
                started=event.at,
                accepted=event.at,
                accepted_by=event.actor_id,
            )
            episodes.append(current)
            if event.actor_id:
                current.operators.add(event.actor_id)
            continue
        if kind == "rated":
            number = _episode_of(event, current.episode if current else 0)
            rating = event.data.get("rating")
            for episode in episodes:
                if episode.episode == number and isinstance(rating, int):
                    episode.rating = rating
            continue
        if current is None:
            continue  # nothing happened to the conversation before its first message
        actor = event.actor_id
        colleague = event.data.get("colleague_id")
        if kind == "accepted":
            current.accepted, current.accepted_by = event.at, actor
        elif kind == "replied":
            current.operator_messages += 1
            if current.first_message is not None and current.first_reply is None:
                current.first_reply, current.first_responder = event.at, actor
        elif kind == "transferred":
            current.transfers += 1
        elif kind in _ENDINGS:
            current.ended, current.outcome = event.at, _ENDINGS[kind]
        elif kind == CALL_MISSED:
            current.call_missed = True
        elif kind not in ("joined", "invited"):
            continue
        if kind in ("accepted", "replied", "joined") and actor:
            current.operators.add(actor)
        if kind in ("transferred", "invited") and isinstance(colleague, str):
            current.operators.add(colleague)
    return ConversationStatistics(
        conversation_id=conversation.id,
        channel=conversation.channel,
        kind=conversation.kind,
        client_id=conversation.client_id,
        episodes=tuple(e.freeze() for e in episodes),
    )


# --- reports over a period ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th quantile (0 <= q <= 1) of `values` by linear interpolation between the closest
    ranks (numpy's default, ``statistics.quantiles(method="inclusive")``): the median of
    1, 2, 3, 4 is 2.5; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    h = (len(ordered) - 1) * q
    low = math.floor(h)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


@attrs.define
class Figures:
    """Counts and samples for one operator, or everyone: what a report's row is made of."""

    chats: int = 0  # chat episodes that began in the period
    chats_accepted: int = 0
    chats_missed: int = 0
    calls: int = 0  # call episodes that began in the period
    calls_answered: int = 0
    calls_missed: int = 0
    reopened: int = 0  # episodes begun by a join (in chats/calls, never accepted or missed)
    ratings: list[int] = attrs.Factory(list)
    first_responses: list[float] = attrs.Factory(list)  # seconds
    waits: list[float] = attrs.Factory(list)  # seconds

    def row(self) -> dict[str, Any]:
        def seconds(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "chats": self.chats,
            "chats_accepted": self.chats_accepted,
            "chats_missed": self.chats_missed,
            "calls": self.calls,
            "calls_answered": self.calls_answered,
            "calls_missed": self.calls_missed,
            "reopened": self.reopened,
            "first_response_median": seconds(percentile(self.first_responses, 0.5)),
            "first_response_p90": seconds(percentile(self.first_responses, 0.9)),
            "wait_median": seconds(percentile(self.waits, 0.5)),
            "wait_p90": seconds(percentile(self.waits, 0.9)),
            "ratings": len(self.ratings),
            "rating_mean": (
                round(sum(self.ratings) / len(self.ratings), 3) if self.ratings else None
            ),
        }


REPORT_COLUMNS = (
    "operator_id",
    "operator",
    "chats",
    "chats_accepted",
    "chats_missed",
    "calls",
    "calls_answered",
    "calls_missed",
    "reopened",
    "first_response_median",
    "first_response_p90",
    "wait_median",
    "wait_p90",
    "ratings",
    "rating_mean",
)


@attrs.define
class Report:
    """A report over the episodes that began in ``[since, until)``, with their figures as the
    log stands when it is made; `overall` and one `Figures` per operator. Feed it conversations'
    statistics with `add` (the desk streams them in batches); memory grows with the number of
    episodes in the period (one sample each), never with the log."""

    since: datetime
    until: datetime
    overall: Figures = attrs.Factory(Figures)
    operators: dict[str, Figures] = attrs.Factory(dict)

    def add(self, stats: ConversationStatistics) -> None:
        """Count the episodes of `stats` that began in the period."""
        for episode in stats.episodes:
            if self.since <= episode.started < self.until:
                self._count(stats.kind, episode)

    def _count(self, kind: Kind, episode: EpisodeStatistics) -> None:
        overall = self.overall
        # Who accepted (or reopened) an episode is credited with it, its wait and its rating;
        # who gave the first reply, with the first response.
        mine = (
            self.operators.setdefault(episode.accepted_by, Figures())
            if episode.accepted_by is not None
            else None
        )
        if episode.reopened:
            for row in (overall, mine):
                if row is not None:
                    row.reopened += 1
        else:
            answered = episode.accepted is not None
            call = kind is Kind.CALL
            overall.calls += call
            overall.chats += not call
            if answered:
                for row in (overall, mine):
                    if row is None:
                        continue
                    if row is mine:  # an operator's chats and calls are the ones they took
                        row.calls += call
                        row.chats += not call
                    row.calls_answered += call
                    row.chats_accepted += not call
                    if episode.wait is not None:
                        row.waits.append(episode.wait.total_seconds())
            elif episode.missed:
                overall.calls_missed += call
                overall.chats_missed += not call
        if episode.rating is not None:
            for row in (overall, mine):
                if row is not None:
                    row.ratings.append(episode.rating)
        if episode.first_response is not None:
            seconds = episode.first_response.total_seconds()
            overall.first_responses.append(seconds)
            if episode.first_responder is not None:
                responder = self.operators.setdefault(episode.first_responder, Figures())
                responder.first_responses.append(seconds)

    def rows(self, names: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """The report as rows: everyone first (operator_id ""), then each operator by name."""
        names = names or {}
        result = [{"operator_id": "", "operator": "all", **self.overall.row()}]
        for operator_id in sorted(self.operators, key=lambda o: (names.get(o, o), o)):
            row = self.operators[operator_id].row()
            result.append(
                {"operator_id": operator_id, "operator": names.get(operator_id, ""), **row}
            )
        return result


def write_report_csv(report: Report, file: IO[str], names: Mapping[str, str] | None = None) -> None:
    """Write the report as CSV (header, then `Report.rows`), every cell neutralised against
    formula injection (`jivocore.csvsafe`): operator names are text a person typed."""
    writer = csv.writer(file)
    writer.writerow(REPORT_COLUMNS)
    for row in report.rows(names):
        writer.writerow(safe_row(row[c] for c in REPORT_COLUMNS))
