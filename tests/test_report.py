"""Reports over a period (`desk.report`): counts, medians and 90th percentiles overall and per
operator, calls beside chats, reopened episodes apart, and the CSV export neutralised against
formula injection."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from test_statistics import _steps, new_desk, play

import jivocore_sqlite
from jivocore import HelpDesk, ValidationError
from jivocore.statistics import Report, write_report_csv
from jivocore.testing import FakeClock, RecordingChannel, channel_plugin


def test_a_report_counts_the_period() -> None:
    clock = FakeClock()
    with HelpDesk(plugins=[jivocore_sqlite, channel_plugin(RecordingChannel())], clock=clock) as d:
        ann = d.add_operator("=HYPERLINK(evil)", presence="online").id
        bob = d.add_operator("Bob", presence="online").id
        before = d.receive("web", "early", "before the period").conversation_id
        d.accept(before, ann)
        since = clock.advance(60)
        for n, (wait, response, who) in enumerate([(10, 20, ann), (30, 40, ann), (50, 60, bob)]):
            cid = d.receive("web", f"v{n}", "hi").conversation_id
            clock.advance(wait)
            d.accept(cid, who)
            clock.advance(response - wait)
            d.reply(cid, who, "hello")
            d.rate(cid, 5 - n)
            d.close(cid, who)
        missed = d.receive("web", "gone", "anyone?").conversation_id
        d.client_left(missed)
        call = d.receive("web", "+1555", "ringing", kind="call").conversation_id
        clock.advance(5)
        d.accept(call, bob)
        d.close(call, bob)
        unanswered = d.receive("web", "+1666", "ringing", kind="call").conversation_id
        d.client_left(unanswered)
        until = clock.advance(1)
        report = d.report(since, until)
        clock.advance(3600)
        d.receive("web", "late", "after the period")

    overall = report.overall
    assert (overall.chats, overall.chats_accepted, overall.chats_missed) == (4, 3, 1)
    assert (overall.calls, overall.calls_answered, overall.calls_missed) == (2, 1, 1)
    assert overall.reopened == 0
    assert sorted(overall.waits) == [5, 10, 30, 50]
    assert sorted(overall.first_responses) == [20, 40, 60]
    row = overall.row()
    assert (row["first_response_median"], row["first_response_p90"]) == (40, 56)
    assert (row["wait_median"], row["wait_p90"]) == (20, 44)
    assert (row["ratings"], row["rating_mean"]) == (3, 4)
    assert report.operators[ann].chats_accepted == 2 and report.operators[ann].waits == [10, 30]
    assert report.operators[bob].calls_answered == 1 and report.operators[bob].chats == 1

    out = io.StringIO()
    write_report_csv(report, out, {ann: "=HYPERLINK(evil)", bob: "Bob"})
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["operator"] for r in rows] == ["all", "'=HYPERLINK(evil)", "Bob"]
    assert rows[0]["chats_accepted"] == "3" and rows[0]["first_response_median"] == "40.0"


def test_a_reopened_episode_counts_apart() -> None:
    clock = FakeClock()
    with HelpDesk(plugins=[jivocore_sqlite, channel_plugin(RecordingChannel())], clock=clock) as d:
        ann = d.add_operator("Ann", presence="online").id
        cid = d.receive("web", "v1", "hi").conversation_id
        d.accept(cid, ann)
        d.close(cid, ann)
        since = clock.advance(86400)
        d.join(cid, ann)
        d.receive("web", "v1", "again")
        clock.advance(9)
        d.reply(cid, ann, "yes?")
        report = d.report(since, clock.advance(1))
    assert report.overall.reopened == 1 and report.overall.chats == 0
    assert report.overall.first_responses == [9]
    assert report.operators[ann].reopened == 1


def test_a_period_must_make_sense() -> None:
    with HelpDesk(plugins=[jivocore_sqlite]) as d:
        now = FakeClock().now()
        for since, until in ((now, now), (now.replace(tzinfo=None), now + timedelta(1))):
            try:
                d.report(since, until)
            except ValidationError:
                continue
            raise AssertionError("refused")


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=_steps)
def test_the_streamed_report_equals_one_made_from_every_conversation(
    steps: list[tuple[object, ...]],
) -> None:
    with new_desk() as (desk, clock, ids):
        start = clock.now()
        model = play(desk, clock, ids, steps)
        end = clock.advance(1)
        middle = start + (end - start) / 2
        for since, until in ((start, end), (middle, end), (start, middle + timedelta(1))):
            streamed = desk.report(since, until)
            whole = Report(since=since, until=until)
            for conversation_id in model:
                whole.add(desk.statistics(conversation_id))
            assert streamed.rows() == whole.rows()
