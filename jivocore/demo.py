"""`jivocore demo`: a scripted day at a help desk, played on a SQLite file step by step."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from .channels import Outbound
from .clock import FakeClock
from .desk import HelpDesk
from .entities import Conversation
from .errors import JivoError
from .plugins import hookimpl


class _WebChat:
    """The demo's channel: it prints what the desk sends to the visitor."""

    name = "web"

    def send(self, outbound: Outbound) -> str | None:
        who = outbound.client.name or outbound.client.id
        click.secho(f"          -> web chat to {who}: {outbound.message.text}", fg="cyan")
        return None


class _DemoPlugin:
    @hookimpl
    def jivocore_register_channels(self, register: object) -> None:
        register(_WebChat())  # type: ignore[operator]


class _Day:
    def __init__(self, desk: HelpDesk, clock: FakeClock) -> None:
        self.desk = desk
        self.clock = clock
        self.names: dict[str, str] = {}

    def step(self, text: str) -> None:
        click.echo()
        click.secho(f"{self.clock.now():%H:%M:%S}  {text}", bold=True)

    def name(self, conversation: Conversation) -> str:
        if conversation.client_id not in self.names:
            self.names[conversation.client_id] = self.desk.client(conversation.client_id).name
        return self.names[conversation.client_id]

    def show(self, *operators: tuple[str, str]) -> None:
        def names(conversations: list[Conversation]) -> str:
            return ", ".join(self.name(c) for c in conversations) or "-"

        for op_id, op_name in operators:
            inbox = names(self.desk.inbox(op_id))
            chats = names(self.desk.chats(op_id))
            click.echo(f"          {op_name:<6} Inbox: {inbox:<22} Chats: {chats}")
        closed = self.desk.archive(limit=10).items
        summary = ", ".join(f"{self.name(c)} ({c.outcome})" for c in closed) or "-"
        click.echo(f"          All: {summary}")


@click.command()
@click.option(
    "--db",
    "database",
    default="demo.db",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The SQLite file to play the day on.",
)
@click.option("--replace", is_flag=True, help="Replace FILE if it exists.")
def demo(database: str, replace: bool) -> None:
    """Play a scripted day at a help desk on a SQLite file, showing Inbox, Chats and All."""
    path = Path(database)
    if path.exists():
        if not replace:
            raise click.ClickException(
                f"{path} exists; the demo plays on a new file: pass --replace to replace it, "
                "or choose another --db"
            )
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{path}{suffix}"):
                os.remove(f"{path}{suffix}")
    clock = FakeClock(datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0))
    with HelpDesk.open(str(path), clock=clock, plugins=[_DemoPlugin()]) as desk:
        play(desk, clock)
    click.echo()
    click.echo(f"The day is stored in {path}; open it with any SQLite tool.")


def play(desk: HelpDesk, clock: FakeClock) -> None:
    """The day's script: each step says what happens, does it, and shows the views."""
    day = _Day(desk, clock)
    day.step("Ann, Bob and Eva (a manager) come online.")
    ann = desk.add_operator("Ann", email="ann@example.com", presence="online")
    bob = desk.add_operator("Bob", email="bob@example.com", presence="online")
    eva = desk.add_operator("Eva", email="eva@example.com", role="manager", presence="online")
    team = ((ann.id, "Ann"), (bob.id, "Bob"), (eva.id, "Eva"))

    clock.advance(timedelta(minutes=3))
    day.step('Maria writes on the web chat: "Hi! My order #1042 has not arrived."')
    maria = desk.receive(
        "web", "visitor-maria", "Hi! My order #1042 has not arrived.", name="Maria"
    )
    clock.advance(20)
    day.step('Pedro writes: "Do you ship to Lisbon?"')
    pedro = desk.receive("web", "visitor-pedro", "Do you ship to Lisbon?", name="Pedro")
    day.show(*team)

    clock.advance(15)
    day.step("Ann ignores Pedro's chat: it leaves her Inbox for a minute; the others still see it.")
    desk.ignore(pedro.conversation_id, ann.id)
    day.show(*team)

    clock.advance(10)
    day.step("Ann accepts Maria's chat and replies.")
    desk.accept(maria.conversation_id, ann.id)
    desk.reply(maria.conversation_id, ann.id, "Hello Maria, let me check order #1042 for you.")
    desk.deliver()
    day.show(*team)

    clock.advance(timedelta(minutes=1))
    day.step("A minute passes: Pedro's chat, still waiting, is back in Ann's Inbox.")
    day.show(*team)

    clock.advance(5)
    day.step("Bob accepts Pedro's chat and replies.")
    desk.accept(pedro.conversation_id, bob.id)
    desk.reply(pedro.conversation_id, bob.id, "Hi Pedro! Yes, we ship to all of Portugal.")
    desk.deliver()
    day.show(*team)

    clock.advance(30)
    day.step("Pedro asks about prices; Bob transfers the chat to Ann, who handles shipping.")
    desk.receive("web", "visitor-pedro", "Great, what does shipping cost?")
    desk.transfer(pedro.conversation_id, bob.id, ann.id)
    day.show(*team)

    clock.advance(20)
    day.step("Ann invites Eva into Maria's chat; Eva answers there.")
    desk.invite(maria.conversation_id, ann.id, eva.id)
    desk.reply(maria.conversation_id, eva.id, "Eva here: the parcel was late; we refund shipping.")
    desk.deliver()
    day.show(*team)

    clock.advance(timedelta(minutes=2))
    day.step("Eva leaves; Ann answers Pedro and ends both chats: they move to All.")
    desk.leave(maria.conversation_id, eva.id)
    desk.reply(pedro.conversation_id, ann.id, "Shipping to Lisbon is 4.90 EUR.")
    desk.deliver()
    desk.close(maria.conversation_id, ann.id)
    desk.close(pedro.conversation_id, ann.id)
    day.show(*team)

    clock.advance(timedelta(minutes=5))
    day.step("A spammer writes; Eva blocks the client for 24 hours: the chat closes as blocked.")
    spam = desk.receive("web", "visitor-x", "BUY CHEAP WATCHES http://spam.example", name="Spammer")
    desk.block(desk.conversation(spam.conversation_id).client_id, eva.id)
    try:
        desk.receive("web", "visitor-x", "BUY NOW")
    except JivoError as exc:
        click.echo(
            f"          The spammer writes again and is refused: {type(exc).__name__}: {exc}"
        )
    day.show(*team)

    clock.advance(timedelta(hours=3))
    day.step("Three hours later Ann joins Maria's closed chat from All to tell her the news.")
    desk.join(maria.conversation_id, ann.id)
    desk.reply(maria.conversation_id, ann.id, "Maria, your refund has been issued today.")
    desk.deliver()
    day.show(*team)
    episode = desk.conversation(maria.conversation_id).episode
    count = len(desk.messages(maria.conversation_id))
    click.echo(f"          Maria's conversation: {count} messages over {episode} episodes.")
