"""The issue's acceptance in headless Chromium (Debian's package, driven by Playwright): a
visitor writes in the widget, operators work the conversation through every tab of the console,
and whatever anyone typed is shown as text. Screenshots go to artifacts/webchat/."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import jivocore_tasks
from jivocore import FakeClock, HelpDesk
from jivocore_webchat import WebChat, add_login, make_app
from jivocore_webchat.testing import running

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("JIVOCORE_ARTIFACTS", Path(__file__).parent.parent / "artifacts"))
XSS_NAME = '<img src=x onerror="window.__xss=1">Eve'
XSS_TEXT = "<script>window.__xss=1</script><b>my parcel is late</b>"
XSS_TAG = "<svg onload=window.__xss=1>"

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    pytest.skip(
        f"no chromium at {CHROMIUM}: apt-get install -y chromium to run the browser tests",
        allow_module_level=True,
    )

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


class Site:
    def __init__(self, desk: HelpDesk, clock: FakeClock, base: str) -> None:
        self.desk, self.clock, self.base = desk, clock, base
        self.ids: dict[str, str] = {}
        for name, role in (("Ann", "admin"), ("Bob", "operator")):
            operator = self.desk.add_operator(name, role=role)
            add_login(self.desk, operator.id, name.lower(), f"{name.lower()}-password")
            self.ids[name] = operator.id


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    clock = FakeClock()
    web = WebChat()
    desk = HelpDesk.open(str(tmp_path / "desk.db"), plugins=[web], clock=clock)
    with running(make_app(desk, web, settings={"webchat_tick": 0.05})) as base:
        yield Site(desk, clock, base)
    desk.shutdown()


def log_in(browser: Any, site: Site, name: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(site.base + "/")
    page.get_by_label("Login").fill(name.lower())
    page.get_by_label("Password").fill(f"{name.lower()}-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#me")).to_contain_text(name)
    return page


def tab(page: Any, name: str) -> None:
    page.locator(f"nav [data-tab={name}]").click()
    expect(page.locator("#view")).to_have_attribute("data-tab", name)


def shot(page: Any, name: str) -> None:
    folder = ARTIFACTS / "webchat"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def no_script_ran(*pages: Any) -> None:
    for page in pages:
        assert page.evaluate("window.__xss") is None


def test_a_conversation_through_every_tab(browser: Any, site: Site) -> None:
    visitor = browser.new_page()
    visitor.add_init_script(f"window.jivoVisitorName = {XSS_NAME!r};")
    ann = log_in(browser, site, "Ann")

    # The visitor writes in the widget on the demo page.
    visitor.goto(site.base + "/demo")
    expect(visitor.locator(".jivo-status")).to_have_attribute("data-online", "true")
    visitor.get_by_label("message").fill(XSS_TEXT)
    visitor.get_by_label("message").press("Enter")
    expect(visitor.locator(".jivo-msg[data-author=client]")).to_have_text(XSS_TEXT)

    # Ann sees it in the Inbox: the name and the text as text.
    row = ann.locator(".inbox .row")
    expect(row.locator(".client")).to_have_text(XSS_NAME)
    expect(row.locator(".preview")).to_have_text(XSS_TEXT)
    assert row.locator("img, script, .client *, .preview *").count() == 0
    shot(ann, "inbox")

    # Ignore: hidden from Ann; the fake clock passes the cooldown and it is back.
    row.get_by_role("button", name="Ignore").click()
    expect(ann.locator(".inbox .row")).to_have_count(0)
    site.clock.advance(float(site.desk.settings["ignore_cooldown"]) + 1)
    ann.locator("#refresh").click()
    expect(ann.locator(".inbox .row")).to_have_count(1)

    # Accept and reply; the visitor sees the reply.
    ann.locator(".inbox .row").get_by_role("button", name="Accept").click()
    expect(ann.locator("#view")).to_have_attribute("data-tab", "chats")
    ann.get_by_label("reply").fill("It ships <i>tomorrow</i>")
    ann.get_by_role("button", name="Send").click()
    expect(visitor.locator(".jivo-msg[data-author=operator]")).to_contain_text(
        "It ships <i>tomorrow</i>"
    )
    expect(ann.locator(".messages .msg")).to_have_count(2)

    # Info panel: add tags, create a task.
    ann.get_by_label("Add tag tag").fill("vip")
    ann.get_by_role("button", name="Add tag").click()
    expect(ann.locator(".info .tag")).to_have_count(1)
    ann.get_by_label("Add tag tag").fill(XSS_TAG)
    ann.get_by_role("button", name="Add tag").click()
    expect(ann.locator(".info .tag")).to_have_count(2)
    expect(ann.locator(".info .tag").first).to_have_text(XSS_TAG)
    assert ann.locator(".info svg").count() == 0
    ann.get_by_label("Create task task title").fill("Call back about the parcel")
    ann.get_by_role("button", name="Create task").click()
    expect(ann.locator("#error")).to_have_text("")
    conversation_id = ann.locator(".chat-list .row").get_attribute("data-id")
    client_id = site.desk.conversation(conversation_id).client_id

    def tasks() -> list[str]:
        found = jivocore_tasks.find_tasks(site.desk, site.ids["Ann"], client_id=client_id)
        return [t.title for t in found.items]

    expect_eventually(lambda: tasks() == ["Call back about the parcel"])
    shot(ann, "chats")

    # Transfer to Bob, who closes it.
    bob = log_in(browser, site, "Bob")
    ann.reload()
    tab(ann, "chats")
    ann.get_by_label("Transfer").select_option(site.ids["Bob"])
    ann.get_by_role("button", name="Transfer").click()
    expect(ann.locator(".chat-list .row")).to_have_count(0)
    tab(bob, "chats")
    expect(bob.locator(".chat-list .row .client")).to_have_text(XSS_NAME)
    bob.get_by_role("button", name="End chat").click()
    expect(bob.locator(".chat-list .row")).to_have_count(0)
    assert site.desk.conversation(conversation_id).state == "closed"

    # Found in All by a word from the chat, and joined again.
    tab(ann, "all")
    ann.get_by_label("search").fill("parcel")

    def found() -> bool:
        ann.get_by_role("button", name="Search").click()
        ann.wait_for_timeout(200)
        return bool(ann.locator(".archive .row").count() == 1)

    expect_eventually(found)
    expect(ann.locator(".archive .row .client")).to_have_text(XSS_NAME)
    expect(ann.locator(".archive .row .stats")).to_contain_text("answered")
    ann.locator(".archive .row").click()
    expect(ann.locator(".messages .msg")).to_have_count(2)
    shot(ann, "all")
    ann.get_by_role("button", name="Join chat").click()
    expect(ann.locator("#view")).to_have_attribute("data-tab", "chats")
    expect(ann.locator(".chat-list .row")).to_have_count(1)
    joined = site.desk.conversation(conversation_id)
    assert (joined.state, joined.owner_id) == ("active", site.ids["Ann"])

    # CRM: the client is listed with their tags, as text.
    tab(ann, "crm")
    expect(ann.locator(".clients .client-name")).to_have_text(XSS_NAME)
    expect(ann.locator(".clients .tag")).to_have_count(2)
    ann.get_by_label("Add client name").fill("Acme <b>Ltd</b>")
    ann.get_by_role("button", name="Add client").click()
    expect(ann.locator(".clients .client-name")).to_have_count(2)
    ann.get_by_label("client search").fill("acme")
    ann.get_by_role("button", name="Filter").click()
    expect(ann.locator(".crm p")).to_have_text("1 clients")
    expect(ann.locator(".clients .client-name")).to_have_text("Acme <b>Ltd</b>")
    shot(ann, "crm")
    shot(visitor, "widget")
    no_script_ran(visitor, ann, bob)


def test_widget_shows_no_operator_and_rate_limit(browser: Any, site: Site) -> None:
    visitor = browser.new_page()
    visitor.goto(site.base + "/demo")
    status = visitor.locator(".jivo-status")
    expect(status).to_have_attribute("data-online", "false")
    expect(status).to_contain_text("No operator is online")
    box = visitor.get_by_label("message")
    for i in range(12):
        box.fill(f"message {i}")
        box.press("Enter")
    expect(visitor.locator(".jivo-notice")).to_contain_text(re.compile(r"wait \d+ s"))
    expect(visitor.locator(".jivo-msg[data-author=client]:not(.pending)")).to_have_count(10)
    # The messages left while nobody was online wait in the inbox.
    assert len(site.desk.inbox(site.ids["Ann"])) == 1


def test_widget_reconnects_without_losing_or_repeating_messages(
    browser: Any, tmp_path: Path
) -> None:
    from jivocore_webchat.testing import free_port

    clock = FakeClock()
    web = WebChat()
    desk = HelpDesk.open(str(tmp_path / "desk.db"), plugins=[web], clock=clock)
    app = make_app(desk, web, settings={"webchat_tick": 0.05})
    ann = desk.add_operator("Ann", presence="online").id
    port = free_port()
    context = browser.new_context()
    texts = ".jivo-msg:not(.pending)"
    with running(app, port=port) as base:
        visitor = context.new_page()
        visitor.goto(base + "/demo")
        box = visitor.get_by_label("message")
        box.fill("first")
        box.press("Enter")
        expect(visitor.locator(texts)).to_have_count(1)
        conversation = desk.inbox(ann)[0].id
        desk.accept(conversation, ann)
    # The server is down: the widget keeps trying; a reply is stored meanwhile.
    expect(visitor.locator(".jivo-status")).to_have_text("Reconnecting…")
    desk.reply(conversation, ann, "sent while you were away")
    box.fill("typed while offline")
    box.press("Enter")
    with running(app, port=port):
        expect(visitor.locator(texts)).to_have_count(3, timeout=15000)
        desk.reply(conversation, ann, "and one more")
        expect(visitor.locator(texts)).to_have_count(4)
        visitor.wait_for_timeout(300)
        shown = [m.split("\n")[-1] for m in visitor.locator(texts).all_inner_texts()]
        assert sorted(shown[1:3]) == ["sent while you were away", "typed while offline"]
        assert (shown[0], shown[3]) == ("first", "and one more")
        assert [m.text for m in desk.messages(conversation)].count("typed while offline") == 1
        # A new page of the same visitor shows the whole conversation once.
        again = context.new_page()
        again.goto(base + "/demo")
        expect(again.locator(texts)).to_have_count(4)
    desk.shutdown()


def expect_eventually(condition: Any, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        time.sleep(0.1)
