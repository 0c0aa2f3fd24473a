"""jivocore_tasks: tasks on a client: title, description, due time, assignee, done.

When a task falls due, the client's conversation opens in the assignee's Chats, as JivoChat
does: the task schedules a timer with the durable scheduler in the same transaction that saves
it, and the timer's handler (run by `desk.run_due()`, late or not) joins the client's latest
conversation as owner if it is closed, joins it if it is active, accepts it if it waits in the
inbox. A client with no conversation has none to open: the task stays on the assignee's list
of overdue tasks and `today`, and the ``task_fell_due`` event says ``opened: false``.

Each command keeps the client's `next_task_due` (the earliest due time of an undone task) in the
same transaction, so client filters answer "has tasks due today or overdue" from an index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from jivocore import (
    Client,
    Conversation,
    EntityType,
    HelpDesk,
    InvalidTransition,
    JivoError,
    NotFoundError,
    Operator,
    Range,
    State,
    Timer,
    ValidationError,
    Work,
    cancel,
    hookimpl,
    new_id,
    schedule,
)
from jivocore_crm import Listing, client_scope, counted, day_bounds, involve, visible_client

TIMER = "task_due"


@attrs.frozen(kw_only=True)
class Task:
    id: str
    version: int = 0
    client_id: str
    title: str
    description: str = ""
    due: datetime
    assignee_id: str
    done: bool = False
    done_at: datetime | None = None
    conversation_id: str | None = None  # the conversation it was created from
    fell_due: datetime | None = None  # the due time whose chat was opened (or tried)
    created: datetime


@hookimpl
def jivocore_register_entity_types(register: Callable[[EntityType], None]) -> None:
    register(
        EntityType(
            name="tasks",
            cls=Task,
            # Listings' order (due), done or not and both.
            indexes=(
                ("client_id", "done", "due"),
                ("assignee_id", "done", "due"),
                ("done", "due"),
                ("due",),
            ),
        )
    )


@hookimpl
def jivocore_register_timers(
    register: Callable[[str, Callable[[HelpDesk, Timer], None]], None],
) -> None:
    register(TIMER, task_fell_due)


@hookimpl
def jivocore_register_commands(register: Callable[[Any], None]) -> None:
    from .cli import tasks_command

    register(tasks_command)


def _utc(due: datetime) -> datetime:
    if not isinstance(due, datetime) or due.utcoffset() is None:
        raise ValidationError(f"a task is due at a timezone-aware datetime, not {due!r}")
    return due.astimezone(UTC)


def _next_due(work: Work, client_id: str) -> None:
    client = work.tx.get(Client, client_id)
    first = next(
        work.tx.select(Task, {"client_id": client_id, "done": False}, order=("due",), limit=1),
        None,
    )
    due = first.due if first else None
    if client.next_task_due != due:
        work.tx.update(attrs.evolve(client, next_task_due=due))


def _task_for(work: Work, operator_id: str, task_id: str) -> Task:
    task = work.tx.get(Task, task_id)
    visible_client(work.tx, work.operator(operator_id), task.client_id)
    return task


def create_task(
    desk: HelpDesk,
    client_id: str,
    operator_id: str,
    title: str,
    due: datetime,
    *,
    description: str = "",
    assignee_id: str | None = None,
    conversation_id: str | None = None,
) -> Task:
    """A task on the client for `assignee_id` (the operator creating it by default), who may
    then see the client. When it falls due, the client's conversation opens in their Chats."""
    if not title.strip():
        raise ValidationError("a task needs a title", field="title")
    at = _utc(due)

    def change(work: Work) -> Task:
        client = visible_client(work.tx, work.operator(operator_id), client_id)
        assignee = assignee_id or operator_id
        involve(work, client, assignee)
        task = work.tx.add(
            Task(
                id=new_id(work.now),
                client_id=client_id,
                title=title.strip(),
                description=description,
                due=at,
                assignee_id=assignee,
                conversation_id=conversation_id,
                created=work.now,
            )
        )
        schedule(work, TIMER, at, key=task.id)
        _next_due(work, client_id)
        work.record(
            "task_created",
            actor_id=operator_id,
            client_id=client_id,
            task_id=task.id,
            assignee_id=assignee,
            due=at.isoformat(),
        )
        return task

    return desk.run(change)


def task_from_conversation(
    desk: HelpDesk,
    conversation_id: str,
    operator_id: str,
    title: str,
    due: datetime,
    **details: Any,
) -> Task:
    """ "Create task" from a conversation's info panel: a task on its client, linked to it."""
    conversation = desk.conversation(conversation_id)
    return create_task(
        desk,
        conversation.client_id,
        operator_id,
        title,
        due,
        conversation_id=conversation_id,
        **details,
    )


_UNSET: Any = object()


def update_task(
    desk: HelpDesk,
    task_id: str,
    operator_id: str,
    *,
    title: str = _UNSET,
    description: str = _UNSET,
    due: datetime = _UNSET,
    assignee_id: str = _UNSET,
) -> Task:
    """Change a task; a new due time moves its timer."""
    edits: dict[str, Any] = {}
    if title is not _UNSET:
        edits["title"] = title.strip()
    if description is not _UNSET:
        edits["description"] = description
    if due is not _UNSET:
        edits["due"] = _utc(due)

    def change(work: Work) -> Task:
        task = _task_for(work, operator_id, task_id)
        changes = dict(edits)
        if assignee_id is not _UNSET:
            involve(work, work.tx.get(Client, task.client_id), assignee_id)
            changes["assignee_id"] = assignee_id
        saved = work.tx.update(attrs.evolve(task, **changes))
        if "due" in changes and not saved.done:
            schedule(work, TIMER, saved.due, key=saved.id)
        _next_due(work, task.client_id)
        work.record(
            "task_updated",
            actor_id=operator_id,
            client_id=task.client_id,
            task_id=task_id,
            fields=sorted(changes),
        )
        return saved

    return desk.run(change)


def complete_task(desk: HelpDesk, task_id: str, operator_id: str, *, done: bool = True) -> Task:
    """Mark a task done (or, with ``done=False``, not done again: its timer comes back)."""

    def change(work: Work) -> Task:
        task = _task_for(work, operator_id, task_id)
        if task.done is done:
            raise InvalidTransition(
                f"task {task_id} is {'already' if done else 'not'} done", task_id=task_id
            )
        saved = work.tx.update(attrs.evolve(task, done=done, done_at=work.now if done else None))
        if done:
            cancel(work, TIMER, task.id)
        elif saved.fell_due != saved.due:
            schedule(work, TIMER, saved.due, key=saved.id)
        _next_due(work, task.client_id)
        work.record(
            "task_done" if done else "task_reopened",
            actor_id=operator_id,
            client_id=task.client_id,
            task_id=task_id,
        )
        return saved

    return desk.run(change)


def delete_task(desk: HelpDesk, task_id: str, operator_id: str) -> None:
    def change(work: Work) -> None:
        task = _task_for(work, operator_id, task_id)
        work.tx.delete(task)
        cancel(work, TIMER, task.id)
        _next_due(work, task.client_id)
        work.record("task_deleted", actor_id=operator_id, client_id=task.client_id, task_id=task_id)

    desk.run(change)


def get_task(desk: HelpDesk, task_id: str, operator_id: str) -> Task:
    with desk.reading() as tx:
        task = tx.get(Task, task_id)
        visible_client(tx, tx.get(Operator, operator_id), task.client_id)
        return task


def find_tasks(
    desk: HelpDesk,
    operator_id: str,
    *,
    client_id: str | None = None,
    assignee_id: str | None = None,
    done: bool | None = False,
    due: str | None = None,
    order: Sequence[str] = ("due",),
    after: str | None = None,
    limit: int = 50,
) -> Listing[Task]:
    """A page of the tasks of clients the operator may see, with their count. `due`:
    ``"overdue"`` (due before now), ``"today"`` (due before the end of today, overdue included)
    or None."""
    where: dict[str, Any] = {}
    if done is not None:
        where["done"] = done
    if assignee_id is not None:
        where["assignee_id"] = assignee_id
    now = desk.clock.now()
    if due == "overdue":
        where["due"] = Range(lt=now)
    elif due == "today":
        where["due"] = Range(lt=day_bounds(desk, now)[1])
    elif due is not None:
        raise ValidationError(f"due is 'overdue', 'today' or None, not {due!r}", field="due")
    with desk.reading() as tx:
        operator = tx.get(Operator, operator_id)
        if client_id is not None:
            visible_client(tx, operator, client_id)
            where["client_id"] = client_id
        else:
            where.update(client_scope(operator))
        page = tx.page(Task, where, order=order, after=after, limit=limit)
        return counted(desk, tx, Task, where, page)


def overdue(desk: HelpDesk, operator_id: str, *, limit: int = 50) -> Listing[Task]:
    """The operator's undone tasks whose due time has passed, most overdue first."""
    return find_tasks(desk, operator_id, assignee_id=operator_id, due="overdue", limit=limit)


def move_tasks(work: Work, from_client_id: str, to_client_id: str) -> int:
    """Give every task of one client to another, within a command (used by a client merge)."""
    moved = 0
    while batch := list(work.tx.select(Task, {"client_id": from_client_id}, limit=500)):
        for task in batch:
            work.tx.update(attrs.evolve(task, client_id=to_client_id))
        moved += len(batch)
    return moved


# --- falling due ------------------------------------------------------------------------------


def _latest_conversation(desk: HelpDesk, client_id: str) -> Conversation | None:
    with desk.reading() as tx:
        return next(
            tx.select(Conversation, {"client_id": client_id}, order=("-created",), limit=1), None
        )


def task_fell_due(desk: HelpDesk, timer: Timer) -> None:
    """The scheduler's handler: open the client's latest conversation in the assignee's Chats.

    It may run twice for one due time (see jivocore/scheduler.py), so it does nothing the
    assignee already has: a chat they take part in stays as it is. A refusal by the lifecycle
    (the assignee is offline for an inbox chat, or may not see the conversation) is recorded and
    not retried: the task stays on their overdue list."""
    with desk.reading() as tx:
        task = tx.find(Task, timer.key or "")
    if task is None or task.done or task.fell_due == task.due:
        return
    conversation = _latest_conversation(desk, task.client_id)
    opened, reason = False, "the client has no conversation"
    if conversation is not None:
        reason = ""
        try:
            if conversation.state is State.INBOX:
                conversation = desk.accept(conversation.id, task.assignee_id)
            elif task.assignee_id not in conversation.participants:
                conversation = desk.join(conversation.id, task.assignee_id)
            opened = True
        except NotFoundError:
            raise
        except JivoError as exc:
            reason = f"{type(exc).__name__}: {exc}"

    def change(work: Work) -> None:
        current = work.tx.find(Task, task.id)
        if current is None or current.due != task.due or current.done:
            return
        work.tx.update(attrs.evolve(current, fell_due=current.due))
        work.record(
            "task_fell_due",
            actor_id=task.assignee_id,
            client_id=task.client_id,
            conversation=conversation,
            task_id=task.id,
            opened=opened,
            reason=reason or None,
        )

    desk.run(change)


__all__ = [
    "TIMER",
    "Task",
    "complete_task",
    "create_task",
    "delete_task",
    "find_tasks",
    "get_task",
    "move_tasks",
    "overdue",
    "task_fell_due",
    "task_from_conversation",
    "update_task",
]
