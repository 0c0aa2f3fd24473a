"""jivocore_tasks: a task falling due opens the client's conversation in the assignee's Chats
(join if closed or active, accept if in the inbox, nothing to open without one), through the
durable scheduler, late or after a restart; overdue tasks; the client's next_task_due."""

from __future__ import annotations

from datetime import timedelta

import pytest
from crmkit import crm_desk

import jivocore_tasks as tasks
from jivocore import FakeClock, PermissionDenied, State


@pytest.fixture
def clock():
    return FakeClock()


def test_falling_due_opens_the_conversation_as_jivochat_does(tmp_path, clock):
    path = tmp_path
    with crm_desk("sqlite", path, clock) as desk:
        ann = desk.add_operator("Ann", presence="online")
        bob = desk.add_operator("Bob", presence="online")
        due = clock.now() + timedelta(hours=1)
        # closed -> the assignee joins it as owner
        closed = desk.receive("web", "closed", "hi")
        desk.accept(closed.conversation_id, ann.id)
        desk.close(closed.conversation_id, ann.id)
        t1 = tasks.task_from_conversation(desk, closed.conversation_id, ann.id, "a", due)
        # active with someone else -> the assignee joins; they may see it, being involved
        active = desk.receive("web", "active", "hi")
        desk.accept(active.conversation_id, bob.id)
        desk.invite(active.conversation_id, bob.id, ann.id)
        desk.leave(active.conversation_id, ann.id)
        t2 = tasks.task_from_conversation(desk, active.conversation_id, ann.id, "b", due)
        # in the inbox -> the assignee accepts it
        waiting = desk.receive("web", "inbox", "hi")
        boss = desk.add_operator("Boss", role="manager")
        t3 = tasks.task_from_conversation(
            desk, waiting.conversation_id, boss.id, "c", due, assignee_id=ann.id
        )
        # no conversation -> nothing to open; the task stays overdue
        lonely = desk.add_client("No chats", responsible_id=ann.id)
        t4 = tasks.create_task(desk, lonely.id, ann.id, "d", due)
        clock.advance(timedelta(hours=5))
        assert desk.run_due() == 4
        chats = {c.id: c for c in desk.chats(ann.id)}
        assert chats[closed.conversation_id].owner_id == ann.id
        assert ann.id in chats[active.conversation_id].participants
        assert chats[waiting.conversation_id].state is State.ACTIVE
        fell = {e.data["task_id"]: e for e in desk.events({"type": "task_fell_due"}).items}
        assert {k: fell[k].data["opened"] for k in fell} == {
            t1.id: True,
            t2.id: True,
            t3.id: True,
            t4.id: False,
        }
        assert fell[t4.id].data["reason"] == "the client has no conversation"
        overdue = tasks.overdue(desk, ann.id)
        assert overdue.count == 4
        tasks.complete_task(desk, t4.id, ann.id)
        assert desk.client(lonely.id).next_task_due is None
        assert tasks.overdue(desk, ann.id).count == 3
        assert desk.run_due() == 0  # each due time opens the chat once


def test_moving_a_due_time_moves_the_timer_and_done_cancels_it(tmp_path, clock):
    with crm_desk("sqlite", tmp_path, clock) as desk:
        ann = desk.add_operator("Ann", presence="online")
        client = desk.add_client("C", responsible_id=ann.id)
        task = tasks.create_task(desk, client.id, ann.id, "t", clock.now() + timedelta(hours=1))
        tasks.update_task(desk, task.id, ann.id, due=clock.now() + timedelta(hours=3))
        assert desk.client(client.id).next_task_due == clock.now() + timedelta(hours=3)
        clock.advance(timedelta(hours=2))
        assert desk.run_due() == 0
        other = tasks.create_task(desk, client.id, ann.id, "u", clock.now())
        tasks.complete_task(desk, other.id, ann.id)
        clock.advance(timedelta(hours=2))
        assert desk.run_due() == 1
        bob = desk.add_operator("Bob")
        with pytest.raises(PermissionDenied):
            tasks.get_task(desk, task.id, bob.id)
