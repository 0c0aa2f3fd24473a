"""The issue's acceptance in headless Chromium (Debian's package, driven by Playwright): a
visitor writes in the widget, operators work the conversation through every tab of the console,
and whatever anyone typed is shown as text. Screenshots go to artifacts/webchat/."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import jivocore_crm
import jivocore_deals
import jivocore_tags
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
    expect(page.locator("#login")).to_be_hidden()
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
    # Shown once stored; the pending copy goes with the server's ack (the echo may come first).
    expect(visitor.locator(".jivo-msg[data-author=client]:not(.pending)")).to_have_text(XSS_TEXT)
    expect(visitor.locator(".jivo-msg.pending")).to_have_count(0)

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
    expect(ann.locator(".crm .count")).to_have_text("1 clients")
    expect(ann.locator(".clients .client-name")).to_have_text("Acme <b>Ltd</b>")
    shot(ann, "crm")
    shot(visitor, "widget")
    no_script_ran(visitor, ann, bob)


def test_crm_imports_and_exports_csv_and_lists_deals_and_tasks(
    browser: Any, site: Site, tmp_path: Path
) -> None:
    ann_id = site.ids["Ann"]
    acme = jivocore_crm.add_client(site.desk, ann_id, XSS_NAME)
    jivocore_tags.tag_client(site.desk, acme.id, XSS_TAG, ann_id)
    deal = jivocore_deals.create_deal(site.desk, acme.id, ann_id, XSS_TEXT, amount="99.90")
    jivocore_deals.create_deal(site.desk, acme.id, ann_id, "Old desks")
    now = site.clock.now()
    jivocore_tasks.create_task(site.desk, acme.id, ann_id, XSS_TEXT, now + timedelta(hours=1))
    jivocore_tasks.create_task(site.desk, acme.id, ann_id, "Quote", now + timedelta(days=5))
    site.clock.advance(2 * 3600)  # the first task is overdue now
    ann = log_in(browser, site, "Ann")
    tab(ann, "crm")
    crm = ann.locator(".crm")
    expect(crm.locator(".clients .client-name")).to_have_text(XSS_NAME)
    expect(crm.locator(".clients .tag")).to_have_text(XSS_TAG)

    # Import: the plan first, with the rejected row; nothing is written until Import.
    upload = tmp_path / "clients.csv"
    upload.write_text(
        f"Name;E-mail;Tags\n{XSS_NAME} Jr;jr@example.org;{XSS_TAG}\nNobody;nobody@;\n",
        encoding="utf-8",
    )
    ann.get_by_label("CSV file").set_input_files(str(upload))
    expect(crm.locator(".import .chosen")).to_have_text("clients.csv")
    ann.get_by_role("button", name="Check file").click()
    report = crm.locator(".import .report")
    expect(report).to_have_attribute("data-dry-run", "true")
    expect(report.locator(".summary")).to_contain_text("would create 1")
    expect(report.locator(".rejected .reason")).to_contain_text("nobody@")
    assert len(site.desk.clients().items) == 1
    shot(ann, "crm-import-plan")
    ann.get_by_role("button", name="Import", exact=True).click()
    expect(report).to_have_attribute("data-dry-run", "false")
    expect(report.locator(".summary")).to_contain_text("did create 1")
    expect(crm.locator(".clients .client-name")).to_have_count(2)
    expect(crm.locator(".clients .client-name").first).to_have_text(XSS_NAME + " Jr")
    with ann.expect_download() as rejected:
        ann.get_by_role("button", name="Download rejected rows").click()
    rows = Path(rejected.value.path()).read_text(encoding="utf-8-sig").splitlines()
    assert rows[0] == "Name;E-mail;Tags;error" and rows[1].startswith("Nobody;nobody@;")
    shot(ann, "crm-clients")

    # Export with the filters shown: the search keeps the imported client only.
    ann.get_by_label("client search").fill("jr")
    ann.get_by_role("button", name="Filter").click()
    expect(crm.locator(".count")).to_have_text("1 clients")
    with ann.expect_download() as exported:
        ann.get_by_role("button", name="Export CSV").click()
    assert exported.value.suggested_filename == "clients.csv"
    text = Path(exported.value.path()).read_text(encoding="utf-8-sig")
    header, *rows = csv.reader(io.StringIO(text))
    assert [row[header.index("name")] for row in rows] == [XSS_NAME + " Jr"]

    # Deals, with their filters.
    crm.locator("[data-crm=deals]").click()
    expect(ann.locator(".crm")).to_have_attribute("data-crm", "deals")
    deals = ann.locator(".crm .deals")
    expect(deals.locator("tr[data-id]")).to_have_count(2)
    row = deals.locator(f"tr[data-id='{deal.id}']")
    expect(row.locator(".title")).to_have_text(XSS_TEXT)
    expect(row.locator(".client-name")).to_have_text(XSS_NAME)
    expect(row).to_contain_text("99.90 USD")
    shot(ann, "crm-deals")
    ann.get_by_label("deal status").select_option("won")
    ann.get_by_role("button", name="Filter").click()
    expect(ann.locator(".crm .count")).to_have_text("0 deals")

    # Tasks: the overdue filter keeps the one whose time has passed.
    ann.locator(".crm [data-crm=tasks]").click()
    tasks = ann.locator(".crm .tasks")
    expect(tasks.locator("tr[data-id]")).to_have_count(2)
    ann.get_by_label("due").select_option("overdue")
    ann.get_by_role("button", name="Filter").click()
    expect(tasks.locator("tr[data-id] .title")).to_have_text([XSS_TEXT])
    expect(tasks.locator("tr[data-id] .client-name")).to_have_text([XSS_NAME])
    shot(ann, "crm-tasks")

    # My day: the overdue task, marked.
    ann.locator(".crm [data-crm=today]").click()
    expect(ann.locator(".today .overdue-count")).to_have_text("1 overdue")
    expect(ann.locator(".today .tasks tr.overdue .title")).to_have_text(XSS_TEXT)
    shot(ann, "crm-today")
    assert ann.locator(".crm img, .crm script, .crm svg, .crm b").count() == 0
    no_script_ran(ann)


def test_lists_page_forward_and_back(browser: Any, site: Site) -> None:
    ann_id = site.ids["Ann"]
    for n in range(55):
        jivocore_crm.add_client(site.desk, ann_id, f"Client {n:02}")
        site.clock.advance(1)
    ann = log_in(browser, site, "Ann")
    tab(ann, "crm")
    names = ann.locator(".crm .clients .client-name")
    count = ann.locator(".crm .count .shown")
    expect(count).to_have_text("1-50 of 55 clients")
    expect(names).to_have_count(50)
    expect(names.first).to_have_text("Client 54")  # newest first
    ann.get_by_role("button", name="Next").click()
    expect(count).to_have_text("51-55 of 55 clients")
    expect(names).to_have_text([f"Client {n:02}" for n in range(4, -1, -1)])
    expect(ann.get_by_role("button", name="Next")).to_have_count(0)
    ann.get_by_role("button", name="Previous").click()
    expect(names.first).to_have_text("Client 54")
    ann.get_by_role("button", name="Next").click()
    ann.get_by_role("button", name="Filter").click()  # a filter starts from the first page
    expect(count).to_have_text("1-50 of 55 clients")


def test_custom_fields_are_shown_as_text(browser: Any, site: Site) -> None:
    ann_id = site.ids["Ann"]
    site.desk.set_presence(ann_id, "online")
    message = site.desk.receive("web", "v-custom", "hello", name="Vera")
    client = site.desk.client(site.desk.conversation(message.conversation_id).client_id)
    jivocore_crm.edit_client(site.desk, client.id, ann_id, custom={XSS_TAG: XSS_TEXT})
    site.desk.accept(message.conversation_id, ann_id)
    ann = log_in(browser, site, "Ann")
    tab(ann, "chats")
    ann.locator(".chat-list .row").first.click()
    info = ann.locator(".info")
    expect(info.locator("dt", has_text="svg")).to_have_text(XSS_TAG)
    expect(info.locator("dd", has_text="parcel")).to_have_text(XSS_TEXT)
    assert info.locator("svg, script, b").count() == 0
    no_script_ran(ann)


def test_a_revoked_token_ends_the_console_session(browser: Any, site: Site) -> None:
    bob = log_in(browser, site, "Bob")
    ann = log_in(browser, site, "Ann")
    ann_token = ann.evaluate("sessionStorage.getItem('jivocore.token')")
    r = httpx.post(
        f"{site.base}/api/operators/{site.ids['Bob']}/revoke",
        headers={"Authorization": f"Bearer {ann_token}"},
    )
    assert r.json() == {"revoked": 1}
    # Bob's open socket is closed with 4401: his console goes back to the login form.
    expect(bob.locator("#login")).to_be_visible()
    expect(bob.locator("#login-error")).to_have_text("Your session ended: log in again.")
    expect(bob.locator("#app")).to_be_hidden()
    expect(ann.locator("#app")).to_be_visible()


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


def test_widget_refuses_a_message_over_the_size_limit(browser: Any, site: Site) -> None:
    visitor = browser.new_page()
    visitor.goto(site.base + "/demo")
    expect(visitor.locator(".jivo-status")).to_have_attribute("data-online", "false")
    huge = "\x01" * 4000  # 4,000 characters, 24,000 bytes as JSON: over the 16 KiB limit
    box = visitor.get_by_label("message")
    box.fill(huge)
    box.press("Enter")
    expect(visitor.locator(".jivo-notice")).to_have_text(
        "That message is too long: please shorten it."
    )
    expect(box).to_have_value(huge)  # given back to shorten, not lost
    expect(visitor.locator(".jivo-msg")).to_have_count(0)
    box.fill("short one")
    box.press("Enter")
    expect(visitor.locator(".jivo-msg[data-author=client]:not(.pending)")).to_have_text("short one")
    (conversation,) = site.desk.inbox(site.ids["Ann"])
    assert [m.text for m in site.desk.messages(conversation.id)] == ["short one"]


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


def test_widget_shows_a_late_reply_in_its_place(browser: Any, tmp_path: Path) -> None:
    # The reply waits in the outbox while the visitor writes again: it arrives last but is
    # shown where it belongs, and the widget still resumes after what it has shown.
    web = WebChat()
    desk = HelpDesk.open(str(tmp_path / "desk.db"), plugins=[web])
    ann = desk.add_operator("Ann", presence="online").id
    texts = ".jivo-msg:not(.pending)"
    with running(make_app(desk, web, worker=False)) as base:
        visitor = browser.new_page()
        visitor.goto(base + "/demo")
        box = visitor.get_by_label("message")
        box.fill("hello")
        box.press("Enter")
        expect(visitor.locator(texts)).to_have_count(1)
        conversation = desk.inbox(ann)[0].id
        desk.accept(conversation, ann)
        desk.reply(conversation, ann, "the reply")
        box.fill("are you there?")
        box.press("Enter")
        expect(visitor.locator(texts)).to_have_count(2)
        desk.deliver()
        expect(visitor.locator(texts)).to_have_count(3)
        seqs = [n.get_attribute("data-seq") for n in visitor.locator(texts).all()]
        assert seqs == ["1", "2", "3"]
        expect(visitor.locator(texts).nth(1)).to_contain_text("the reply")
    desk.shutdown()


def expect_eventually(condition: Any, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        time.sleep(0.1)
