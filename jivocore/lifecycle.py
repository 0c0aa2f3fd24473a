"""The conversation lifecycle: the transition table (data) and the pure function that applies it.

`RULES` is the single source of truth: the engine applies it, `docs/lifecycle.md` is generated
from it (`jivocore.lifecycle.diagram()`), and a test fails when the two disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import attrs

from .entities import Conversation, Ignore, Kind, Operator, Outcome, State
from .errors import ClientBlocked, InvalidTransition, PermissionDenied


@attrs.frozen(kw_only=True)
class Act:
    """The facts one command is decided on; gathered by the engine, so `transition` stays pure."""

    command: str
    now: datetime
    actor: Operator | None = None  # None: the client or the system
    colleague: Operator | None = None  # the target of transfer and invite
    actor_load: int = 0  # active conversations the actor owns now (capacity)
    cooldown: timedelta = timedelta(seconds=60)  # how long an ignore hides a conversation
    client_blocked: bool = False  # the conversation's client is blocked now
    other_open: str | None = None  # another open conversation of the client on the channel
    name_of: Callable[[str], str] = str  # operator id -> how errors name them


Guard = Callable[[Conversation, Act], None]


def _actor(act: Act) -> Operator:
    if act.actor is None:
        raise PermissionDenied(f"{act.command} needs an operator", command=act.command)
    return act.actor


def online(conversation: Conversation, act: Act) -> None:
    """The operator is online."""
    actor = _actor(act)
    if actor.presence != "online":
        raise PermissionDenied(
            f"{act.name_of(actor.id)} is {actor.presence.value}: only an online operator can "
            f"{act.command}",
            operator_id=actor.id,
            command=act.command,
        )


def under_capacity(conversation: Conversation, act: Act) -> None:
    """The operator owns fewer active chats than their capacity."""
    actor = _actor(act)
    if actor.capacity is not None and act.actor_load >= actor.capacity:
        raise PermissionDenied(
            f"{act.name_of(actor.id)} already has {act.actor_load} active chats, their capacity",
            operator_id=actor.id,
            command=act.command,
        )


def participant(conversation: Conversation, act: Act) -> None:
    """The operator takes part in the conversation."""
    actor = _actor(act)
    if actor.id not in conversation.participants:
        raise PermissionDenied(
            f"{act.name_of(actor.id)} does not take part in conversation {conversation.id}",
            operator_id=actor.id,
            conversation_id=conversation.id,
            command=act.command,
        )


def not_owner(conversation: Conversation, act: Act) -> None:
    """The operator is not the owner (an owner transfers or closes instead)."""
    actor = _actor(act)
    if actor.id == conversation.owner_id:
        raise PermissionDenied(
            f"{act.name_of(actor.id)} owns conversation {conversation.id}: transfer or close it "
            "instead of leaving",
            operator_id=actor.id,
            conversation_id=conversation.id,
            command=act.command,
        )


def owner_or_manager(conversation: Conversation, act: Act) -> None:
    """The operator owns the conversation, or is a manager or admin."""
    actor = _actor(act)
    if actor.id != conversation.owner_id and not actor.is_manager:
        raise PermissionDenied(
            f"only the owner ({act.name_of(conversation.owner_id or '')}) or a manager can "
            f"{act.command} conversation {conversation.id}",
            operator_id=actor.id,
            conversation_id=conversation.id,
            command=act.command,
        )


def can_see(conversation: Conversation, act: Act) -> None:
    """The operator may see the conversation: they took part in it, or see all."""
    actor = _actor(act)
    if not (actor.is_manager or actor.sees_all or actor.id in conversation.involved):
        raise PermissionDenied(
            f"{act.name_of(actor.id)} may not see conversation {conversation.id}",
            operator_id=actor.id,
            conversation_id=conversation.id,
            command=act.command,
        )


def _colleague(act: Act) -> Operator:
    if act.colleague is None:
        raise PermissionDenied(f"{act.command} needs a colleague", command=act.command)
    return act.colleague


def client_not_blocked(conversation: Conversation, act: Act) -> None:
    """The client is not blocked."""
    if act.client_blocked:
        raise ClientBlocked(
            f"the client of conversation {conversation.id} is blocked: unblock them to reopen it",
            client_id=conversation.client_id,
            conversation_id=conversation.id,
        )


def no_other_open(conversation: Conversation, act: Act) -> None:
    """The client has no other open conversation on the channel (one at a time)."""
    if act.other_open is not None:
        raise InvalidTransition(
            f"the client already has conversation {act.other_open} open on "
            f"{conversation.channel}: join that one instead",
            conversation_id=conversation.id,
            state=conversation.state,
            command=act.command,
            open_id=act.other_open,
        )


def colleague_online(conversation: Conversation, act: Act) -> None:
    """The colleague is online."""
    colleague = _colleague(act)
    if colleague.presence != "online":
        raise PermissionDenied(
            f"{act.name_of(colleague.id)} is {colleague.presence.value}: only an online "
            f"colleague can be given a conversation",
            operator_id=colleague.id,
            command=act.command,
        )


def colleague_not_owner(conversation: Conversation, act: Act) -> None:
    """The colleague does not own the conversation already (an invited one may take it over)."""
    colleague = _colleague(act)
    if colleague.id == conversation.owner_id:
        raise InvalidTransition(
            f"{act.name_of(colleague.id)} already owns conversation {conversation.id}",
            conversation_id=conversation.id,
            state=conversation.state,
            command=act.command,
        )


def _not_taking_part(conversation: Conversation, act: Act, operator: Operator) -> None:
    if operator.id in conversation.participants:
        raise InvalidTransition(
            f"{act.name_of(operator.id)} already takes part in conversation {conversation.id}",
            conversation_id=conversation.id,
            state=conversation.state,
            command=act.command,
        )


def colleague_not_participant(conversation: Conversation, act: Act) -> None:
    """The colleague does not take part already."""
    _not_taking_part(conversation, act, _colleague(act))


def not_participant(conversation: Conversation, act: Act) -> None:
    """The operator does not take part already."""
    _not_taking_part(conversation, act, _actor(act))


# --- effects: what each command does to a conversation the guards have let through -----------


def _message(c: Conversation, act: Act) -> Conversation:
    return attrs.evolve(c, message_count=c.message_count + 1, last_message_at=act.now)


def _ignore(c: Conversation, act: Act) -> Conversation:
    actor = _actor(act)
    kept = tuple(i for i in c.ignores if i.operator_id != actor.id and act.now < i.until)
    return attrs.evolve(
        c, ignores=(*kept, Ignore(operator_id=actor.id, until=act.now + act.cooldown))
    )


def _accept(c: Conversation, act: Act) -> Conversation:
    actor = _actor(act)
    return attrs.evolve(
        c,
        state=State.ACTIVE,
        owner_id=actor.id,
        participants=frozenset({actor.id}),
        involved=c.involved | {actor.id},
        accepted=act.now,
        ignores=(),
    )


def _transfer(c: Conversation, act: Act) -> Conversation:
    to = _colleague(act).id
    return attrs.evolve(
        c,
        owner_id=to,
        participants=(c.participants - {c.owner_id}) | {to},
        involved=c.involved | {to},
    )


def _invite(c: Conversation, act: Act) -> Conversation:
    to = _colleague(act).id
    return attrs.evolve(c, participants=c.participants | {to}, involved=c.involved | {to})


def _leave(c: Conversation, act: Act) -> Conversation:
    return attrs.evolve(c, participants=c.participants - {_actor(act).id})


def _closing(outcome: Outcome) -> Callable[[Conversation, Act], Conversation]:
    def close(c: Conversation, act: Act) -> Conversation:
        return attrs.evolve(
            c,
            state=State.CLOSED,
            owner_id=None,
            participants=frozenset(),
            ignores=(),
            closed=act.now,
            outcome=outcome,
        )

    return close


def _reopen(c: Conversation, act: Act) -> Conversation:
    actor = _actor(act)
    return attrs.evolve(
        c,
        state=State.ACTIVE,
        owner_id=actor.id,
        participants=frozenset({actor.id}),
        involved=c.involved | {actor.id},
        episode=c.episode + 1,
        accepted=act.now,
        closed=None,
        outcome=None,
    )


def _join(c: Conversation, act: Act) -> Conversation:
    actor = _actor(act)
    return attrs.evolve(
        c, participants=c.participants | {actor.id}, involved=c.involved | {actor.id}
    )


@attrs.frozen(kw_only=True)
class Rule:
    """One row of the transition table."""

    command: str
    sources: tuple[State | None, ...]  # None: there is no open conversation yet
    target: State | None  # None: the state stays as it was
    who: str
    guards: tuple[Guard, ...] = ()
    effect: Callable[[Conversation, Act], Conversation] | None = None
    event: str  # the past-tense event the command appends
    summary: str


OPEN = (State.INBOX, State.ACTIVE)

RULES: tuple[Rule, ...] = (
    Rule(
        command="receive",
        sources=(None,),
        target=State.INBOX,
        who="client, through a channel",
        event="received",
        summary="a new conversation; a blocked client is refused",
    ),
    Rule(
        command="receive",
        sources=OPEN,
        target=None,
        who="client, through a channel",
        effect=_message,
        event="received",
        summary="the message is appended",
    ),
    Rule(
        command="ignore",
        sources=(State.INBOX,),
        target=None,
        who="online operator",
        guards=(online,),
        effect=_ignore,
        event="ignored",
        summary="hidden from that operator until now + cooldown; it reappears by itself",
    ),
    Rule(
        command="accept",
        sources=(State.INBOX,),
        target=State.ACTIVE,
        who="online operator under capacity",
        guards=(online, under_capacity),
        effect=_accept,
        event="accepted",
        summary="owner = participants = the operator; "
        "the client's responsible operator is set if empty",
    ),
    Rule(
        command="reply",
        sources=(State.ACTIVE,),
        target=None,
        who="participant",
        guards=(participant,),
        effect=_message,
        event="replied",
        summary="an operator message, delivered through the conversation's channel",
    ),
    Rule(
        command="transfer",
        sources=(State.ACTIVE,),
        target=None,
        who="owner or manager",
        guards=(owner_or_manager, colleague_online, colleague_not_owner),
        effect=_transfer,
        event="transferred",
        summary="owner = the online colleague, who may be taking part already; the previous "
        "owner leaves",
    ),
    Rule(
        command="invite",
        sources=(State.ACTIVE,),
        target=None,
        who="participant",
        guards=(participant, colleague_online, colleague_not_participant),
        effect=_invite,
        event="invited",
        summary="the online colleague joins the participants",
    ),
    Rule(
        command="leave",
        sources=(State.ACTIVE,),
        target=None,
        who="participant, not the owner",
        guards=(participant, not_owner),
        effect=_leave,
        event="left",
        summary="the operator leaves the participants",
    ),
    Rule(
        command="close",
        sources=(State.ACTIVE,),
        target=State.CLOSED,
        who="owner or manager",
        guards=(owner_or_manager,),
        effect=_closing(Outcome.ANSWERED),
        event="closed",
        summary="outcome answered; its statistics are final",
    ),
    Rule(
        command="client_left",
        sources=(State.INBOX,),
        target=State.CLOSED,
        who="the client or the system",
        effect=_closing(Outcome.MISSED),
        event="missed",
        summary="nobody accepted it: outcome missed",
    ),
    Rule(
        command="join",
        sources=(State.CLOSED,),
        target=State.ACTIVE,
        who="operator who may see it",
        guards=(can_see, client_not_blocked, no_other_open),
        effect=_reopen,
        event="joined",
        summary="owner = the operator; a new episode begins (not for a blocked client, nor while "
        "the client has another conversation open on the channel)",
    ),
    Rule(
        command="join",
        sources=(State.ACTIVE,),
        target=None,
        who="operator who may see it",
        guards=(can_see, not_participant),
        effect=_join,
        event="joined",
        summary="the operator joins the participants",
    ),
    Rule(
        command="block",
        sources=OPEN,
        target=State.CLOSED,
        who="operator",
        guards=(),
        effect=_closing(Outcome.BLOCKED),
        event="blocked",
        summary="every open conversation of the client closes; new messages are refused until "
        "unblocked or the block expires",
    ),
)

COMMANDS: tuple[str, ...] = tuple(dict.fromkeys(rule.command for rule in RULES))


def rule_for(command: str, state: State | None) -> Rule:
    """The rule for `command` from `state`, or InvalidTransition saying where it applies."""
    for rule in RULES:
        if rule.command == command and state in rule.sources:
            return rule
    if command not in COMMANDS:
        raise InvalidTransition(f"unknown command {command!r}", command=command, state=state)
    allowed = sorted({s.value for r in RULES if r.command == command for s in r.sources if s})
    raise InvalidTransition(
        f"cannot {command} a conversation that is {state.value if state else 'not open'}; "
        f"{command} applies to {' or '.join(allowed)} conversations",
        command=command,
        state=state,
    )


def transition(conversation: Conversation, act: Act) -> Conversation:
    """The conversation after `act`, or a JivoError saying why not. Pure: changes nothing."""
    if act.command == "accept" and conversation.state is State.ACTIVE:
        owner = conversation.owner_id or ""
        raise InvalidTransition(
            f"conversation {conversation.id} was already accepted by {act.name_of(owner)}",
            command=act.command,
            state=conversation.state,
            conversation_id=conversation.id,
            owner_id=owner,
        )
    rule = rule_for(act.command, conversation.state)
    for guard in rule.guards:
        guard(conversation, act)
    assert rule.effect is not None
    return rule.effect(conversation, act)


def start(*, id: str, channel: str, kind: Kind, client_id: str, now: datetime) -> Conversation:
    """A new conversation in the inbox (the `receive` rule from no conversation)."""
    return Conversation(id=id, channel=channel, kind=kind, client_id=client_id, created=now)


def diagram() -> str:
    """The lifecycle as Markdown: a Mermaid state diagram and the table, generated from RULES."""
    lines = ["```mermaid", "stateDiagram-v2"]
    for rule in RULES:
        for source in rule.sources:
            a = "[*]" if source is None else source.value
            b = (rule.target or source or State.INBOX).value
            lines.append(f"    {a} --> {b}: {rule.command}")
    lines += [
        "```",
        "",
        "| command | from -> to | who may | guards | event | effect |",
        "|---|---|---|---|---|---|",
    ]
    for rule in RULES:
        for source in rule.sources:
            a = "—" if source is None else source.value
            b = "same" if rule.target is None else rule.target.value
            guards = ", ".join(g.__name__ for g in rule.guards) or "—"
            lines.append(
                f"| {rule.command} | {a} -> {b} | {rule.who} | {guards} | {rule.event} | "
                f"{rule.summary} |"
            )
    legend = dict.fromkeys(g for rule in RULES for g in rule.guards)
    lines += ["", "Guards:", ""]
    lines += [f"- `{g.__name__}`: {(g.__doc__ or '').strip()}" for g in legend]
    return "\n".join(lines) + "\n"
