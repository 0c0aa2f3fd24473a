"""The web chat app over HTTP and WebSocket, on a real uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from click.testing import CliRunner
from starlette.routing import Route, WebSocketRoute

import jivocore_deals
import jivocore_tasks
from jivocore import FakeClock, HelpDesk
from jivocore.cli import make_cli
from jivocore_webchat import WebChat, add_login, make_app, openapi
from jivocore_webchat.cli import seed_demo
from jivocore_webchat.testing import running


class Desk:
    def __init__(self, desk: HelpDesk, base: str, clock: FakeClock, web: WebChat) -> None:
        self.desk, self.base, self.clock, self.web = desk, base, clock, web
        self.http = httpx.Client(base_url=base, timeout=10)
        self.ws = base.replace("http://", "ws://")

    def login(self, name: str, role: str = "operator") -> tuple[str, dict[str, str]]:
        operator = self.desk.add_operator(name.capitalize(), role=role)
        add_login(self.desk, operator.id, name, f"{name}-password")
        r = self.http.post("/api/login", json={"login": name, "password": f"{name}-password"})
        assert r.status_code == 200, r.text
        return operator.id, {"Authorization": f"Bearer {r.json()['token']}"}

    def visitor(self) -> tuple[str, dict[str, str]]:
        data = self.http.post("/api/visitor/session").json()
        return data["visitor_id"], {"Authorization": f"Bearer {data['token']}"}


@pytest.fixture
def site(tmp_path: Any) -> Iterator[Desk]:
    clock = FakeClock()
    web = WebChat(allowed_origins=["https://shop.example"])
    desk = HelpDesk.open(str(tmp_path / "desk.db"), plugins=[web], clock=clock)
    app = make_app(desk, web, settings={"webchat_max_message_bytes": 4096})
    with running(app) as base:
        yield Desk(desk, base, clock, web)
    desk.shutdown()


async def recv(ws: Any, type: str, timeout: float = 5) -> dict[str, Any]:
    """The next payload of that type."""
    async with asyncio.timeout(timeout):
        while True:
            data: dict[str, Any] = json.loads(await ws.recv())
            if data["type"] == type:
                return data


def test_login_wrong_password_is_401_with_a_json_body(site: Desk) -> None:
    site.login("ann")
    r = site.http.post("/api/login", json={"login": "ann", "password": "nope-nope"})
    assert r.status_code == 401
    assert r.json()["error"] == "Unauthorized"
    stored = site.desk.operators()[0]
    assert stored.presence == "online"  # the successful login put Ann online


def test_wrong_passwords_for_a_login_are_throttled_with_429_and_retry_after(
    tmp_path: Any,
) -> None:
    import time

    web = WebChat()
    desk = HelpDesk.open(str(tmp_path / "desk.db"), plugins=[web])
    for name in ("ann", "bob"):
        add_login(desk, desk.add_operator(name.title()).id, name, f"{name}-password")
    settings = {"webchat_login_failures": 3, "webchat_login_every": 0.5}
    with running(make_app(desk, web, settings=settings)) as base:

        def log_in(login: str, password: str) -> httpx.Response:
            return httpx.post(base + "/api/login", json={"login": login, "password": password})

        assert [log_in("ann", "guess").status_code for _ in range(3)] == [401] * 3
        r = log_in("ANN ", "ann-password")  # the same login name, even with the password
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert r.json()["error"] == "TooManyAttempts"
        assert log_in("bob", "bob-password").status_code == 200  # other names are not slowed
        time.sleep(0.6)
        assert log_in("ann", "ann-password").status_code == 200
        assert log_in("ann", "ann-password").status_code == 200  # success spends nothing
    desk.shutdown()


def test_password_is_stored_hashed(site: Desk) -> None:
    from jivocore_webchat import WebLogin

    site.login("ann")
    with site.desk.reading() as tx:
        (login,) = list(tx.select(WebLogin))
    assert "ann-password" not in login.password_hash
    assert login.password_hash.startswith("scrypt$")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("GET", "/api/conversations/nope", None, 404, "NotFoundError"),
        ("POST", "/api/conversations/nope/reply", {}, 422, "ValidationError"),
        ("POST", "/api/conversations/nope/reply", {"text": 5}, 422, "ValidationError"),
        ("POST", "/api/presence", {"presence": "dancing"}, 422, "ValidationError"),
        ("GET", "/api/nowhere", None, 404, "HTTPError"),
        ("DELETE", "/api/inbox", None, 405, "HTTPError"),
        (
            "POST",
            "/api/operators",
            {"name": "X", "login": "x", "password": "12345678"},
            403,
            "PermissionDenied",
        ),
    ],
)
def test_errors_are_json_with_the_mapped_status(
    site: Desk, method: str, path: str, body: Any, status: int, error: str
) -> None:
    _, auth = site.login("bob")
    r = site.http.request(method, path, json=body, headers=auth)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == error
    assert r.json()["status"] == status


def test_a_whole_chat_over_http_and_websocket(site: Desk) -> None:
    _, auth = site.login("ann")
    bob, bob_auth = site.login("bob")

    async def chat() -> None:
        async with websockets.connect(site.ws + "/api/visitor/ws") as ws:
            welcome = await recv(ws, "welcome")
            assert (await recv(ws, "status"))["operators_online"] is True
            await ws.send(json.dumps({"type": "message", "id": "m1", "text": "Where is it?"}))
            mine = await recv(ws, "message")
            assert (mine["seq"], mine["author"]) == (1, "client")
            await recv(ws, "ack")
            (item,) = site.http.get("/api/inbox", headers=auth).json()
            cid = item["conversation"]["id"]
            assert item["preview"] == "Where is it?"
            assert site.http.post(f"/api/conversations/{cid}/accept", headers=auth).is_success
            r = site.http.post(f"/api/conversations/{cid}/reply", headers=auth, json={"text": "Hi"})
            assert r.status_code == 200
            reply = await recv(ws, "message")
            assert (reply["seq"], reply["text"], reply["name"]) == (2, "Hi", "Ann")
            tagged = site.http.post(
                f"/api/conversations/{cid}/tags", headers=auth, json={"name": "vip"}
            ).json()
            assert tagged["tags"] == ["vip"]
            task = site.http.post(
                f"/api/conversations/{cid}/tasks", headers=auth, json={"title": "Call back"}
            ).json()
            deal = site.http.post(
                f"/api/conversations/{cid}/deals", headers=auth, json={"title": "X", "amount": "9"}
            ).json()
            moved = site.http.post(
                f"/api/conversations/{cid}/transfer", headers=auth, json={"operator_id": bob}
            ).json()
            assert moved["owner_id"] == bob
            # Ann left the chat: the engine's own rules refuse her now.
            r = site.http.post(f"/api/conversations/{cid}/close", headers=auth)
            assert r.status_code == 403, r.text
            assert site.http.post(f"/api/conversations/{cid}/close", headers=bob_auth).is_success
            client = site.http.get(f"/api/clients/{item['client']['id']}", headers=auth).json()
            assert [t["id"] for t in client["tasks"]] == [task["id"]]
            assert [d["id"] for d in client["deals"]] == [deal["id"]]
            assert welcome["token"]

    asyncio.run(chat())


def test_reconnect_resumes_after_the_last_seen_sequence_number(site: Desk) -> None:
    ann, auth = site.login("ann")

    async def chat() -> None:
        async with websockets.connect(site.ws + "/api/visitor/ws") as ws:
            token = (await recv(ws, "welcome"))["token"]
            for i in range(3):
                await ws.send(json.dumps({"type": "message", "id": f"m{i}", "text": f"t{i}"}))
                await recv(ws, "ack")
        cid = site.desk.inbox(ann)[0].id
        site.desk.accept(cid, ann)
        site.desk.reply(cid, ann, "while you were away")
        seen = []
        url = f"{site.ws}/api/visitor/ws?token={token}&conversation_id={cid}&after=2"
        async with websockets.connect(url) as ws:
            seen.append(await recv(ws, "message"))
            seen.append(await recv(ws, "message"))
            site.http.post(f"/api/conversations/{cid}/reply", headers=auth, json={"text": "live"})
            seen.append(await recv(ws, "message"))
            with pytest.raises(TimeoutError):
                await recv(ws, "message", timeout=0.7)  # nothing twice
        assert [(m["seq"], m["text"]) for m in seen] == [
            (3, "t2"),
            (4, "while you were away"),
            (5, "live"),
        ]

    asyncio.run(chat())


def test_a_reply_delivered_after_the_visitors_next_message_still_reaches_them(
    tmp_path: Any,
) -> None:
    # The reply (seq 2) waits in the outbox while the visitor's next message (seq 3) is pushed
    # at once: the socket must not take 2 for one it already sent.
    web = WebChat()
    desk = HelpDesk.open(str(tmp_path / "desk.db"), plugins=[web])
    ann = desk.add_operator("Ann", presence="online")

    async def chat(base: str) -> list[tuple[int, str]]:
        got: list[dict[str, Any]] = []

        async def until(type: str) -> None:  # keeping the messages that come first
            while (data := json.loads(await asyncio.wait_for(ws.recv(), 5)))["type"] != type:
                if data["type"] == "message":
                    got.append(data)

        async with websockets.connect(base.replace("http", "ws") + "/api/visitor/ws") as ws:
            await ws.send(json.dumps({"type": "message", "id": "1", "text": "hello"}))
            await until("ack")
            conversation = desk.inbox(ann.id)[0].id
            desk.accept(conversation, ann.id)
            desk.reply(conversation, ann.id, "the reply")  # in the outbox
            await ws.send(json.dumps({"type": "message", "id": "2", "text": "are you there?"}))
            await until("ack")
            desk.deliver()  # now the reply is pushed
            while len(got) < 3:
                got.append(await recv(ws, "message"))
            return [(m["seq"], m["text"]) for m in got]

    with running(make_app(desk, web, worker=False)) as base:
        got = asyncio.run(chat(base))
    desk.shutdown()
    assert got == [(1, "hello"), (3, "are you there?"), (2, "the reply")]


def test_a_resent_message_is_stored_once(site: Desk) -> None:
    _, auth = site.visitor()
    for _ in range(2):
        r = site.http.post("/api/visitor/messages", headers=auth, json={"text": "hi", "id": "x1"})
        assert r.status_code == 200
    assert [
        m["seq"] for m in site.http.get("/api/visitor/messages", headers=auth).json()["messages"]
    ] == [1]


def test_no_operator_online_the_visitor_is_told_and_can_leave_a_message(site: Desk) -> None:
    async def chat() -> None:
        async with websockets.connect(site.ws + "/api/visitor/ws") as ws:
            assert (await recv(ws, "status"))["operators_online"] is False
            await ws.send(json.dumps({"type": "message", "id": "m1", "text": "call me"}))
            await recv(ws, "ack")
            ann = site.desk.add_operator("Ann")
            site.desk.set_presence(ann.id, "online")
            while not (await recv(ws, "status"))["operators_online"]:
                pass  # the operator was added offline first
            assert [c.id for c in site.desk.inbox(ann.id)]

    asyncio.run(chat())


def test_a_visitor_token_cannot_read_or_write_another_conversation(site: Desk) -> None:
    alice, alice_auth = site.visitor()
    _, mallory_auth = site.visitor()
    site.http.post("/api/visitor/messages", headers=alice_auth, json={"text": "my secret"})
    cid = site.http.get("/api/visitor/messages", headers=alice_auth).json()["conversation_id"]
    theirs = site.http.get(
        "/api/visitor/messages", headers=mallory_auth, params={"conversation_id": cid}
    ).json()
    assert theirs == {"conversation_id": None, "messages": []}
    forged = {"Authorization": f"Bearer {alice}.{'0' * 64}"}
    r = site.http.get("/api/visitor/messages", headers=forged)
    assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
    site.http.post("/api/visitor/messages", headers=mallory_auth, json={"text": "hi"})
    assert [m.text for m in site.desk.messages(cid)] == ["my secret"]
    operator_token = site.login("ann")[1]
    assert site.http.get("/api/inbox", headers=alice_auth).status_code == 401
    assert site.http.get("/api/visitor/messages", headers=operator_token).status_code == 401

    async def socket() -> None:  # asking the socket for Alice's conversation gets one's own
        mallory = mallory_auth["Authorization"].split()[1]
        url = f"{site.ws}/api/visitor/ws?token={mallory}&conversation_id={cid}&after=0"
        async with websockets.connect(url) as ws:
            mine = await recv(ws, "message")
            assert mine["text"] == "hi" and mine["conversation_id"] != cid
            site.desk.receive("web", alice, "another secret")
            with pytest.raises(TimeoutError):
                await recv(ws, "message", timeout=0.7)

    asyncio.run(socket())


def test_a_revoked_token_is_refused_on_http_and_closes_its_websocket(site: Desk) -> None:
    ann, auth = site.login("ann", role="admin")
    bob, bob_auth = site.login("bob")
    token = bob_auth["Authorization"].split()[1]

    async def check() -> None:
        async with websockets.connect(f"{site.ws}/api/operator/ws?token={token}") as ws:
            await recv(ws, "hello")
            r = site.http.post(f"/api/operators/{bob}/revoke", headers=auth)
            assert r.json() == {"revoked": 1}
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    while True:
                        await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(f"{site.ws}/api/operator/ws?token={token}") as ws:
                await ws.recv()

    asyncio.run(check())
    assert site.http.get("/api/me", headers=bob_auth).status_code == 401
    assert site.http.get("/api/me", headers=auth).status_code == 200
    # Bob may not revoke Ann's tokens; logging out revokes one's own.
    _, bob_again = site.login("bob2")
    assert site.http.post(f"/api/operators/{ann}/revoke", headers=bob_again).status_code == 403
    assert site.http.post("/api/logout", headers=auth).is_success
    assert site.http.get("/api/me", headers=auth).status_code == 401


def test_operator_websocket_hears_committed_events(site: Desk) -> None:
    _, auth = site.login("ann")
    token = auth["Authorization"].split()[1]

    async def check() -> None:
        async with websockets.connect(f"{site.ws}/api/operator/ws?token={token}") as ws:
            await recv(ws, "hello")
            visitor = site.visitor()[1]
            site.http.post("/api/visitor/messages", headers=visitor, json={"text": "hi"})
            events = await recv(ws, "events")
            assert "received" in [e["type"] for e in events["events"]]

    asyncio.run(check())


def test_websocket_origin_is_checked_against_the_allow_list(site: Desk) -> None:
    async def check() -> None:
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(
                site.ws + "/api/visitor/ws", origin=websockets.Origin("https://evil.example")
            ) as ws:
                await ws.recv()
        for origin in ("https://shop.example", site.base):
            async with websockets.connect(
                site.ws + "/api/visitor/ws", origin=websockets.Origin(origin)
            ) as ws:
                await recv(ws, "welcome")

    asyncio.run(check())


def test_message_size_limit_413_and_close_1009(site: Desk) -> None:
    _, auth = site.visitor()
    r = site.http.post("/api/visitor/messages", headers=auth, json={"text": "x" * 5000})
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"

    async def check() -> None:
        async with websockets.connect(site.ws + "/api/visitor/ws") as ws:
            await recv(ws, "welcome")
            await ws.send(json.dumps({"type": "message", "id": "big", "text": "x" * 5000}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    while True:
                        await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    asyncio.run(check())


def test_rate_limit_answers_429_with_retry_after(site: Desk) -> None:
    _, auth = site.visitor()
    statuses = [
        site.http.post("/api/visitor/messages", headers=auth, json={"text": f"m{i}"}).status_code
        for i in range(11)
    ]
    assert statuses[:10] == [200] * 10
    assert statuses[10] == 429
    r = site.http.post("/api/visitor/messages", headers=auth, json={"text": "again"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"] == "TooManyRequests"
    _, other = site.visitor()  # per visitor
    assert site.http.post("/api/visitor/messages", headers=other, json={"text": "hi"}).is_success

    async def check() -> None:
        async with websockets.connect(site.ws + "/api/visitor/ws") as ws:
            await recv(ws, "welcome")
            for i in range(11):
                await ws.send(json.dumps({"type": "message", "id": f"w{i}", "text": "x"}))
            refused = await recv(ws, "error")
            assert refused["status"] == 429 and refused["retry_after"] >= 1

    asyncio.run(check())


def test_every_route_is_in_the_openapi_document(site: Desk) -> None:
    document = site.http.get("/openapi.json").json()
    assert document == json.loads(json.dumps(openapi()))
    app = make_app(site.desk, site.web, worker=False)
    documented = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            assert ("GET", route.path) in documented
        elif isinstance(route, Route) and route.path.startswith("/api/"):
            for method in route.methods or ():
                if method != "HEAD":
                    assert (method, route.path) in documented, route.path
    for path, ops in document["paths"].items():
        for op in ops.values():
            if "default" in op["responses"]:
                ref = op["responses"]["default"]["content"]["application/json"]["schema"]
                assert ref == {"$ref": "#/components/schemas/Error"}, path


def test_static_pages_are_served(site: Desk) -> None:
    for path, kind in (("/", "text/html"), ("/widget.js", "text/javascript"), ("/demo", "html")):
        r = site.http.get(path)
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert "innerHTML" not in site.http.get("/widget.js").text
    assert "innerHTML" not in site.http.get("/console.js").text


def test_serve_is_a_jivocore_command_and_demo_seeds_every_view(tmp_path: Any) -> None:
    result = CliRunner().invoke(make_cli(), ["serve", "--help"])
    assert result.exit_code == 0 and "--demo" in result.output
    web = WebChat()
    desk = HelpDesk.open(str(tmp_path / "demo.db"), plugins=[web])
    made = seed_demo(desk)
    assert [login for _, login, _ in made] == ["ann", "bob", "max"]
    assert seed_demo(desk) == []  # once
    ann = next(o for o in desk.operators() if o.name == "Ann")
    assert desk.inbox(ann.id) and desk.chats(ann.id) and desk.archive(ann.id).items
    assert desk.archive(ann.id, text="invoice").items
    assert jivocore_deals.find_deals(desk, ann.id).count == 1  # the CRM page has its lists
    assert jivocore_tasks.find_tasks(desk, ann.id).count == 1
    app = make_app(desk, web)
    with running(app) as base:
        r = httpx.post(base + "/api/login", json={"login": "bob", "password": made[1][2]})
        assert r.status_code == 200
    desk.shutdown()


def test_serve_shuts_the_desk_down_on_sigterm(tmp_path: Any) -> None:
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from jivocore_webchat.testing import free_port

    db, port = tmp_path / "served.db", free_port()
    server = subprocess.Popen(
        [Path(sys.executable).parent / "jivocore", "--db", db, "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/openapi.json").status_code == 200:
                    break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout
                time.sleep(0.1)
        assert (tmp_path / "served.db-wal").exists()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
    finally:
        server.kill()
    assert not (tmp_path / "served.db-wal").exists()  # closed: the last connection checkpointed


def test_the_docs_mounting_example_runs(tmp_path: Any, monkeypatch: Any) -> None:
    import re
    from pathlib import Path

    docs = (Path(__file__).parent.parent / "docs" / "webchat.md").read_text(encoding="utf-8")
    (example,) = re.findall(r"```python\n(.*?)```", docs, flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(example, "docs/webchat.md", "exec"), namespace)
    with running(namespace["app"]) as base:
        assert httpx.get(base + "/help/widget.js").status_code == 200
        r = httpx.post(
            base + "/help/api/login", json={"login": "ann", "password": "a long password"}
        )
        assert r.status_code == 200
    namespace["desk"].shutdown()
