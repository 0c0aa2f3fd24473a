"""`jivocore serve`: the web chat and the console on a SQLite file, with uvicorn."""

from __future__ import annotations

import secrets
import signal
import sys
from datetime import timedelta

import click

import jivocore_deals
import jivocore_tags
import jivocore_tasks
from jivocore import HelpDesk, Operator

from .auth import WebLogin, add_login
from .channel import WebChat

DEMO_OPERATORS = (("Ann", "ann", "admin"), ("Bob", "bob", "operator"), ("Max", "max", "manager"))
DEMO_CHATS = (
    ("Maria", ("Hello! Where is my order #1042?", "It left the warehouse yesterday?")),
    ("Chen", ("Do you ship to Canada?",)),
    ("Olga", ("My invoice shows the wrong address.",)),
)


def seed_demo(desk: HelpDesk) -> list[tuple[str, str, str]]:
    """Operators with console logins, clients and conversations in every view; returns
    (name, login, password) for each operator made. Does nothing on a desk that has logins."""
    with desk.reading() as tx:
        if list(tx.select(WebLogin, limit=1)):
            return []
    made: list[tuple[str, str, str]] = []
    ops: list[Operator] = []
    for name, login, role in DEMO_OPERATORS:
        operator = desk.add_operator(name, role=role, presence="offline")
        password = secrets.token_urlsafe(9)
        add_login(desk, operator.id, login, password)
        made.append((name, login, password))
        ops.append(operator)
    ann = ops[0]
    desk.set_presence(ann.id, "online")
    conversations = []
    for i, (client, texts) in enumerate(DEMO_CHATS):
        first = None
        for j, text in enumerate(texts):
            message = desk.receive(
                "web", f"demo-{i}", text, message_id=f"demo-{i}-{j}", name=client
            )
            first = first or message
        assert first is not None
        conversations.append(first.conversation_id)
    desk.accept(conversations[0], ann.id)
    desk.reply(conversations[0], ann.id, "Yes: it arrives tomorrow. Anything else?")
    desk.accept(conversations[2], ann.id)
    desk.reply(conversations[2], ann.id, "Fixed: a new invoice is on its way.")
    jivocore_tags.tag_conversation(desk, conversations[2], "billing", ann.id)
    desk.close(conversations[2], ann.id)
    acme = desk.add_client("Acme Ltd", emails=("buyer@acme.example",), responsible_id=ann.id)
    desk.add_client("Lena", emails=("lena@example.org",), responsible_id=ann.id)
    # The CRM page's deals, tasks and "my day" have something to show.
    jivocore_deals.create_deal(desk, acme.id, ann.id, "40 office chairs", amount="5200.00")
    jivocore_tasks.create_task(
        desk, acme.id, ann.id, "Send Acme the quote", desk.clock.now() + timedelta(hours=4)
    )
    desk.set_presence(ann.id, "offline")
    while desk.index_archive():
        pass
    desk.deliver()
    return made


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--demo", is_flag=True, help="Seed operators, clients and conversations.")
@click.option(
    "--allow-origin",
    "origins",
    multiple=True,
    help="An origin whose pages may embed the widget (repeat; '*' for any).",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, demo: bool, origins: tuple[str, ...]) -> None:
    """Run the web chat and the operator console (http://HOST:PORT/, widget demo at /demo)."""
    import uvicorn

    from .app import make_app

    database = ctx.find_root().params.get("database", "jivocore.db")
    web = WebChat(allowed_origins=origins)
    desk = HelpDesk.open(database, plugins=[web])
    try:
        if demo:
            made = seed_demo(desk)
            for name, login, password in made:
                click.echo(f"operator {name}: login {login!r} password {password!r}")
            if not made:
                click.echo("demo: this database has logins already; nothing seeded")
        desk.start_channels()
        click.echo(f"console: http://{host}:{port}/   widget demo: http://{host}:{port}/demo")
        # uvicorn stops gracefully on SIGTERM, then raises it again under the handler it found:
        # make that an exit, so the desk below is shut down (as on Ctrl-C) rather than killed.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        uvicorn.run(make_app(desk, web), host=host, port=port, log_level="warning")
    finally:
        desk.stop_channels()
        desk.shutdown()
