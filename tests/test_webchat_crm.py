"""The console's CRM over HTTP, on a real uvicorn server on loopback: CSV import (the plan, the
run, rejected rows, refusals, size limit, streamed upload) and export (streamed, the plugin's
bytes), and the lists of deals, tasks and the operator's day with their filters."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import jivocore_crm
import jivocore_csv
import jivocore_deals
import jivocore_tasks
from jivocore import FakeClock, HelpDesk
from jivocore_webchat import WebChat, add_login, make_app
from jivocore_webchat.testing import running
from jivocore_webchat.transfer import Download, stream

CSV = (
    "Name,E-mail,Phone,Tags\n"
    "Ana Souza,ana@example.org,+5511987654321,vip\n"
    "Bad Row,ana@,+5511987654322,\n"
    "Chen Wei,chen@example.org,,\n"
)


class Site:
    def __init__(self, desk: HelpDesk, base: str, clock: FakeClock, app: Any) -> None:
        self.desk, self.base, self.clock, self.app = desk, base, clock, app
        self.http = httpx.Client(base_url=base, timeout=30)
        self.ids: dict[str, str] = {}
        self.auth: dict[str, dict[str, str]] = {}

    def login(self, name: str, role: str = "operator") -> dict[str, str]:
        operator = self.desk.add_operator(name.capitalize(), role=role)
        add_login(self.desk, operator.id, name, f"{name}-password")
        r = self.http.post("/api/login", json={"login": name, "password": f"{name}-password"})
        assert r.status_code == 200, r.text
        self.ids[name] = operator.id
        self.auth[name] = {"Authorization": f"Bearer {r.json()['token']}"}
        return self.auth[name]

    def clients(self) -> list[str]:
        return sorted(c.name for c in self.desk.clients(limit=100_000).items)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    clock = FakeClock()
    web = WebChat()
    desk = HelpDesk.open(str(tmp_path / "desk.db"), plugins=[web], clock=clock)
    app = make_app(desk, web, settings={"webchat_max_upload_bytes": 512 * 1024})
    with running(app) as base:
        site = Site(desk, base, clock, app)
        site.login("max", role="manager")
        site.login("bob")
        yield site
    desk.shutdown()


def upload(site: Site, body: Any, who: str = "max", **params: str) -> httpx.Response:
    return site.http.post(
        "/api/clients/import",
        params=params,
        content=body,
        headers={**site.auth[who], "Content-Type": "text/csv"},
    )


def test_import_shows_the_plan_then_imports_it_and_keeps_the_rejected_rows(site: Site) -> None:
    plan = upload(site, CSV, dry_run="true")
    assert plan.status_code == 200, plan.text
    report = plan.json()
    assert report["dry_run"] is True
    assert (report["rows"], report["created"], report["rejected"]) == (3, 2, 1)
    assert report["summary"].startswith("3 rows: would create 2")
    (error,) = report["errors"]
    assert (error["record"], error["line"], error["column"]) == (2, 3, "E-mail")
    assert "ana@" in error["reason"]
    assert site.clients() == []  # a plan changes nothing

    done = upload(site, CSV).json()
    assert (done["dry_run"], done["created"], done["rejected"]) == (False, 2, 1)
    assert {k: done[k] for k in ("rows", "created", "updated")} == {
        k: report[k] for k in ("rows", "created", "updated")
    }
    assert site.clients() == ["Ana Souza", "Chen Wei"]
    ana = next(c for c in site.desk.clients().items if c.name == "Ana Souza")
    assert ana.tags == {"vip"} and ana.phones == ("+5511987654321",)

    rejected = site.http.get("/" + done["rejected_file"], headers=site.auth["max"])
    assert rejected.status_code == 200
    rows = list(csv.reader(io.StringIO(rejected.content.decode("utf-8-sig"))))
    assert rows[0] == ["Name", "E-mail", "Phone", "Tags", "error"]
    assert rows[1][:2] == ["Bad Row", "ana@"] and "ana@" in rows[1][4]
    # Only the operator who imported reads them.
    other = site.http.get("/" + done["rejected_file"], headers=site.auth["bob"])
    assert other.status_code == 404 and other.json()["error"] == "NotFoundError"
    assert upload(site, CSV).json()["unchanged"] == 2  # the same file again changes nothing


def test_import_is_for_operators_who_see_every_client(site: Site) -> None:
    r = upload(site, CSV, who="bob")
    assert r.status_code == 403 and r.json()["error"] == "PermissionDenied"
    assert site.clients() == []


@pytest.mark.parametrize(
    ("body", "params", "words"),
    [
        ("", {}, "empty"),
        ("\x00\x01\x02PK binary", {}, "binary"),
        ("Colour,Size\nred,10\n", {}, "Colour"),
        (CSV, {"duplicates": "sometimes"}, "merge, report"),
        (CSV, {"region": "Atlantis"}, "region"),
        (CSV, {"delimiter": "x"}, "delimiter"),
        (CSV, {"dry_run": "maybe"}, "true or false"),
        (CSV, {"encodnig": "utf-8"}, "unknown 'encodnig'"),
    ],
)
def test_a_refused_import_is_a_422_that_writes_nothing(
    site: Site, body: str, params: dict[str, str], words: str
) -> None:
    r = upload(site, body, **params)
    assert r.status_code == 422, r.text
    assert r.json()["error"] in ("CsvRefused", "ValidationError")
    assert words in r.json()["message"]
    assert site.clients() == []
    assert os.listdir(site.app.state.webchat.files.name) == []  # the upload is gone


def test_an_upload_streams_to_disk_and_stops_at_the_limit(site: Site) -> None:
    row = "Client {i},c{i}@example.org\n"

    def chunks(rows: int) -> Iterator[bytes]:  # no Content-Length: chunked transfer
        yield b"Name,Email\n"
        for start in range(0, rows, 500):
            yield "".join(row.format(i=i) for i in range(start, start + 500)).encode()

    done = upload(site, chunks(5000))
    assert done.status_code == 200, done.text
    assert done.json()["created"] == 5000  # far over the 16 KiB JSON body limit
    big = upload(site, chunks(40_000))  # ~1.2 MB, over the 512 KiB upload limit
    assert big.status_code == 413 and big.json()["error"] == "PayloadTooLarge"
    assert len(site.clients()) == 5000
    assert os.listdir(site.app.state.webchat.files.name) == []


def test_export_streams_the_plugins_csv_for_the_filters(site: Site) -> None:
    upload(site, CSV)
    for i in range(2500):  # more than one of the export's pages
        site.desk.add_client(f"Lead {i}", status="lead")
    expected = io.BytesIO()
    jivocore_csv.export_clients(
        site.desk, expected, site.ids["max"], jivocore_crm.ClientFilter(statuses={"lead"})
    )
    with site.http.stream(
        "GET", "/api/clients/export", params={"status": "lead"}, headers=site.auth["max"]
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/csv; charset=utf-8"
        assert "content-length" not in r.headers  # streamed, not built first
        assert 'filename="clients.csv"' in r.headers["content-disposition"]
        body = b"".join(r.iter_bytes())
    assert body == expected.getvalue()
    assert body.count(b"\n") == 2501
    semi = site.http.get(
        "/api/clients/export",
        params={"delimiter": ";", "encoding": "utf-16", "text": "ana"},
        headers=site.auth["max"],
    )
    assert semi.headers["content-type"] == "text/csv; charset=utf-16"
    assert semi.content.decode("utf-16").splitlines()[1].split(";")[2] == "Ana Souza"
    # Bob sees none of these clients: his export is the header alone.
    assert site.http.get("/api/clients/export", headers=site.auth["bob"]).text.count("\n") == 1
    bad = site.http.get("/api/clients/export?encoding=ebcdic", headers=site.auth["max"])
    assert bad.status_code == 422 and bad.json()["error"] == "ValidationError"


def test_a_download_whose_reader_goes_away_stops_its_writer() -> None:
    stopped = threading.Event()

    def endless(out: Any) -> None:
        try:
            while True:
                out.write(b"x" * 10_000)
        finally:
            stopped.set()

    async def read_a_little() -> None:
        body = await stream(Download("x.csv", "text/csv", endless))
        async for _ in body:
            break
        await body.aclose()  # type: ignore[attr-defined]

    asyncio.run(read_a_little())
    assert stopped.wait(5)


def test_a_writer_refusing_before_its_first_byte_raises_before_the_response() -> None:
    def refuse(out: Any) -> None:
        raise jivocore_crm.ValidationError("no such filter")

    async def start() -> None:
        await stream(Download("x.csv", "text/csv", refuse))

    with pytest.raises(jivocore_crm.ValidationError):
        asyncio.run(start())


def test_deals_and_tasks_lists_with_their_filters(site: Site) -> None:
    max_, bob = site.ids["max"], site.ids["bob"]
    acme = jivocore_crm.add_client(site.desk, max_, "Acme")
    mine = jivocore_crm.add_client(site.desk, bob, "Bob's client")
    chairs = jivocore_deals.create_deal(site.desk, acme.id, max_, "Chairs", amount="120.50")
    tables = jivocore_deals.create_deal(site.desk, acme.id, max_, "Tables", stage="proposal")
    jivocore_deals.set_status(site.desk, tables.id, max_, "won")
    lamps = jivocore_deals.create_deal(site.desk, mine.id, bob, "Lamps")
    now = site.clock.now()
    late = jivocore_tasks.create_task(site.desk, acme.id, max_, "Call", now + timedelta(hours=1))
    jivocore_tasks.create_task(site.desk, mine.id, bob, "Visit", now + timedelta(days=3))
    site.clock.advance(7200)

    def get(path: str, who: str = "max", **params: str) -> Any:
        r = site.http.get(path, params=params, headers=site.auth[who])
        assert r.status_code == 200, r.text
        return r.json()

    open_deals = get("/api/deals", status="open")
    assert {d["title"] for d in open_deals["items"]} == {"Chairs", "Lamps"}
    assert open_deals["count"] == 2
    (won,) = get("/api/deals", status="won")["items"]
    assert (won["title"], won["client_name"], won["stage"]) == ("Tables", "Acme", "proposal")
    (mine_only,) = get("/api/deals", responsible_id=bob)["items"]
    assert mine_only["id"] == lamps.id
    assert get("/api/deals", stage="new", status="open")["count"] == 2
    chairs_json = next(d for d in open_deals["items"] if d["id"] == chairs.id)
    assert chairs_json["amount"] == "120.50"
    # Bob sees only his client's deals and tasks.
    assert [d["title"] for d in get("/api/deals", "bob")["items"]] == ["Lamps"]
    assert [t["title"] for t in get("/api/tasks", "bob")["items"]] == ["Visit"]

    (overdue,) = get("/api/tasks", due="overdue")["items"]
    assert (overdue["id"], overdue["client_name"]) == (late.id, "Acme")
    assert get("/api/tasks", assignee_id=bob)["count"] == 1
    assert get("/api/tasks", state="done")["count"] == 0
    assert get("/api/tasks", state="any")["count"] == 2

    day = get("/api/today")
    assert [(t["title"], t["overdue"]) for t in day["tasks"]] == [("Call", True)]
    assert day["overdue"] == 1
    assert get("/api/stages") == list(jivocore_deals.pipeline(site.desk))

    bad = site.http.get("/api/tasks", params={"due": "someday"}, headers=site.auth["max"])
    assert bad.status_code == 422 and "today, overdue" in bad.json()["message"]
