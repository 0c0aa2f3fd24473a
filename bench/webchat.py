"""WebSocket load on the web chat: N visitors on loopback talking to 20 operators, beside a
minimal Starlette relay driven by the same clients, in the same run.

    python bench/webchat.py                                  # 200 and 1,000 visitors
    python bench/webchat.py --visitors 20 --seconds 2 --rounds 1   # smoke, seconds

Every part is a process of its own: the server (the engine is `make_app` on a fresh SQLite file
under uvicorn, as `jivocore serve` runs it; the raw limit is a relay that forwards each visitor
frame to its operator's socket and acknowledges it, no storage), one operator client (20
consoles: HTTP login, an operator socket each, and the HTTP API to accept and reply) and one
visitor client per `--per-process` visitors (asyncio + websockets). Each round runs, for both
sides in alternating order, a saturating phase (each visitor sends as soon as its previous
message is acknowledged) and a phase at `--rate` messages/s in total (open loop, with operator
replies at `--reply-rate`). Latency is from the visitor's send to the responsible operator's
socket receiving the message (CLOCK_MONOTONIC, shared by the processes), and from an operator's
reply over HTTP to the visitor's socket receiving it. Exit 2 if a message was lost or doubled
on the way or in the database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PASSWORD = "bench-password"
# The per-visitor limit (burst 10, then 1 message/s) would cap a saturating run at N msgs/s.
NO_RATE_LIMIT = {"webchat_rate_burst": 10**9, "webchat_rate_per_second": 1e9}
TEXT = "Hello, my order {i} has not arrived yet, message {k}"


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the servers ------------------------------------------------------------------------------


def serve(kind: str, port: int, database: str, operators: int) -> None:
    import uvicorn

    if kind == "raw":
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.run(relay(operators), host="127.0.0.1", port=port, log_level="warning")
        return
    from jivocore import HelpDesk
    from jivocore_webchat import WebChat, make_app

    web = WebChat()
    desk = HelpDesk.open(database, plugins=[web])
    desk.start_channels()
    try:
        app = make_app(desk, web, settings=NO_RATE_LIMIT)
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    finally:
        desk.stop_channels()
        desk.shutdown()


def relay(operators: int) -> Any:
    """The raw limit: visitor i's frames go to operator i % operators, then an ack; a reply
    POSTed for visitor i goes to i's socket. JSON in and out, as the engine's sockets."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    visitors: dict[int, WebSocket] = {}
    consoles: dict[int, WebSocket] = {}

    async def visitor(ws: WebSocket) -> None:
        i = int(ws.query_params["i"])
        await ws.accept()
        visitors[i] = ws
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                data = json.loads(await ws.receive_text())
                forward = {"type": "message", "visitor": i, "id": data["id"], "text": data["text"]}
                await consoles[i % operators].send_json(forward)
                await ws.send_json({"type": "ack", "id": data["id"]})

    async def operator(ws: WebSocket) -> None:
        await ws.accept()
        consoles[int(ws.query_params["op"])] = ws
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await ws.receive_text()

    async def reply(request: Request) -> JSONResponse:
        body = await request.json()
        message = {"type": "message", "author": "operator", "text": body["text"]}
        await visitors[int(request.path_params["i"])].send_json(message)
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            WebSocketRoute("/ws/visitor", visitor),
            WebSocketRoute("/ws/operator", operator),
            Route("/reply/{i}", reply, methods=["POST"]),
        ]
    )


# --- the load generator: visitors -------------------------------------------------------------


class Visitor:
    def __init__(self, i: int) -> None:
        self.i = i
        self.ws: Any = None
        self.k = 0  # messages sent, the hello included
        self.sent: dict[str, float] = {}  # message id -> send time, this phase
        self.acks: asyncio.Queue[tuple[str, bool, float]] = asyncio.Queue()
        self.last_ack = 0.0

    async def read(self, replies: dict[str, float], errors: list[Any]) -> None:
        async for frame in self.ws:
            now = time.monotonic()
            data = json.loads(frame)
            kind = data.get("type")
            if kind == "ack":
                self.acks.put_nowait((data["id"], True, now))
            elif kind == "error":
                errors.append(data)
                self.acks.put_nowait((data.get("id"), False, now))
            elif kind == "message" and data.get("author") == "operator":
                replies[data["text"]] = now

    async def send(self) -> None:
        message_id = str(self.k)
        self.k += 1
        text = TEXT.format(i=self.i, k=message_id) if self.k > 1 else f"hello {self.i}"
        self.sent[message_id] = time.monotonic()
        await self.ws.send(json.dumps({"type": "message", "id": message_id, "text": text}))

    async def saturate(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            await self.send()
            message_id, ok, self.last_ack = await self.acks.get()
            if not ok:
                self.sent.pop(message_id, None)

    async def at_times(self, times: list[float]) -> None:
        """Open loop: send at the given times, acknowledged or not; then wait for the acks."""
        for at in times:
            await asyncio.sleep(at - time.monotonic())
            await self.send()
        for _ in times:
            message_id, ok, acked = await self.acks.get()
            self.last_ack = max(self.last_ack, acked)
            if not ok:
                self.sent.pop(message_id, None)


async def visitors_main(base: str, kind: str, first: int, last: int) -> None:
    from websockets.asyncio.client import connect

    url = base.replace("http://", "ws://")
    crowd = [Visitor(i) for i in range(first, last)]
    replies: dict[str, float] = {}
    errors: list[Any] = []
    readers = []
    gate = asyncio.Semaphore(50)

    async def open_(v: Visitor) -> None:
        path = "/api/visitor/ws" if kind == "engine" else f"/ws/visitor?i={v.i}"
        async with gate:
            v.ws = await connect(url + path, compression=None, max_size=None, open_timeout=60)
            readers.append(asyncio.ensure_future(v.read(replies, errors)))
            await v.send()  # the hello opens the conversation
            await v.acks.get()
            v.sent.clear()

    async for command in commands():
        if command["do"] == "connect":
            await asyncio.gather(*(open_(v) for v in crowd))
            answer({"connected": len(crowd), "errors": errors})
        elif command["do"] == "run":
            for v in crowd:
                v.sent.clear()
                v.last_ack = 0.0
            replies.clear()
            errors.clear()
            start, seconds, rate, n = (command[k] for k in ("start", "seconds", "rate", "n"))
            cpu = cpu_seconds()
            await asyncio.sleep(start - time.monotonic())
            if rate:
                period = n / rate  # each visitor's, staggered over all visitors
                jobs = [
                    v.at_times(
                        [
                            start + (v.i / n + j) * period
                            for j in range(int(seconds / period) + 1)
                            if (v.i / n + j) * period < seconds
                        ]
                    )
                    for v in crowd
                ]
            else:
                jobs = [v.saturate(start + seconds) for v in crowd]
            await asyncio.wait_for(asyncio.gather(*jobs), seconds + 120)
            answer(
                {
                    "sent": {v.i: sorted(v.sent.values()) for v in crowd},
                    "end": max(v.last_ack for v in crowd),
                    "errors": errors[:3],
                    "cpu": cpu_seconds() - cpu,
                }
            )
        elif command["do"] == "replies":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    while len(replies) < command["expected"]:
                        await asyncio.sleep(0.02)
            answer({"replies": replies})
        elif command["do"] == "quit":
            break
    for v in crowd:
        await v.ws.close()
    for reader in readers:
        reader.cancel()


# --- the load generator: operators ------------------------------------------------------------


async def operators_main(base: str, kind: str, count: int, consoles: bool) -> None:
    import httpx
    from websockets.asyncio.client import connect

    url = base.replace("http://", "ws://")
    http = httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=count))
    headers: list[dict[str, str]] = []
    visitor_of: dict[str, int] = {}  # conversation id -> visitor
    conversation_of: dict[int, str] = {}
    received: dict[int, list[float]] = {}  # visitor -> arrival times at the responsible operator
    frames, reads = [0], [0]
    rendering: list[asyncio.Future[None] | None] = [None] * count
    sockets = []
    readers = []

    async def read(j: int, ws: Any) -> None:
        async for frame in ws:
            now = time.monotonic()
            frames[0] += 1
            data = json.loads(frame)
            if data["type"] == "message":  # the relay
                received.setdefault(data["visitor"], []).append(now)
            elif data["type"] == "events":
                for event in data["events"]:
                    i = visitor_of.get(event["conversation_id"])
                    if event["type"] == "received" and i is not None and i % count == j:
                        received.setdefault(i, []).append(now)
                if consoles and rendering[j] is None:
                    rendering[j] = asyncio.ensure_future(render(j))

    async def render(j: int) -> None:
        """What console.js does on every live update: re-read its view (here Chats, at most
        one read in flight per console, where a browser sends one per update)."""
        (await http.get("/api/chats", headers=headers[j])).raise_for_status()
        rendering[j] = None
        reads[0] += 1

    async def log_in(j: int) -> None:
        if kind == "engine":
            r = await http.post("/api/login", json={"login": f"op{j}", "password": PASSWORD})
            r.raise_for_status()
            token = r.json()["token"]
            headers.append({"Authorization": f"Bearer {token}"})
            ws = await connect(f"{url}/api/operator/ws?token={token}", compression=None)
            assert json.loads(await ws.recv())["type"] == "hello"
        else:
            ws = await connect(f"{url}/ws/operator?op={j}", compression=None)
        sockets.append(ws)
        readers.append(asyncio.ensure_future(read(j, ws)))

    async def accept_share(j: int, n: int) -> None:
        """As the console: read the inbox (its 50 oldest), accept this operator's share."""
        mine = {i for i in range(n) if i % count == j}
        while mine - conversation_of.keys():
            r = await http.get("/api/inbox", headers=headers[j])
            r.raise_for_status()
            for view in r.json():
                i = int(view["preview"].split()[-1])
                if i in mine:
                    conversation_id = view["conversation"]["id"]
                    path = f"/api/conversations/{conversation_id}/accept"
                    (await http.post(path, headers=headers[j])).raise_for_status()
                    visitor_of[conversation_id], conversation_of[i] = i, conversation_id
            await asyncio.sleep(0.02)

    async def reply(i: int, tag: str, sent: dict[str, tuple[int, float]]) -> None:
        sent[tag] = (i, time.monotonic())
        if kind == "engine":
            path = f"/api/conversations/{conversation_of[i]}/reply"
            r = await http.post(path, json={"text": tag}, headers=headers[i % count])
        else:
            r = await http.post(f"/reply/{i}", json={"text": tag})
        r.raise_for_status()

    tags = 0
    async for command in commands():
        if command["do"] == "log_in":
            for j in range(count):  # one after the other: each scrypt check takes 16 MiB
                await log_in(j)
            answer({"operators": len(sockets)})
        elif command["do"] == "accept":
            if kind == "engine":
                await asyncio.gather(*(accept_share(j, command["n"]) for j in range(count)))
            answer({"accepted": len(visitor_of)})
        elif command["do"] == "run":  # replies at a fixed rate over the phase
            received.clear()
            frames[0] = reads[0] = 0
            start, seconds, rate, n = (command[k] for k in ("start", "seconds", "reply_rate", "n"))
            cpu = cpu_seconds()
            sent: dict[str, tuple[int, float]] = {}
            jobs = []
            for m in range(int(seconds * rate)):
                await asyncio.sleep(start + m / rate - time.monotonic())
                tags += 1
                jobs.append(asyncio.ensure_future(reply((tags * 7919) % n, f"r{tags}", sent)))
            await asyncio.gather(*jobs)
            answer({"replies": sent, "cpu": cpu_seconds() - cpu})
        elif command["do"] == "collect":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    while sum(map(len, received.values())) < command["expected"]:
                        await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # a doubled message would arrive now
            counts = {"frames": frames[0], "reads": reads[0]}
            answer({"received": received, **counts, "cpu": cpu_seconds() - cpu})
        elif command["do"] == "quit":
            break
    for ws in sockets:
        await ws.close()
    for reader in readers:
        reader.cancel()
    await http.aclose()


async def commands() -> Any:
    """The parent's commands, one JSON line each on stdin."""
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        yield json.loads(line)


def answer(value: Any) -> None:
    print(json.dumps(value), flush=True)


# --- the parent -------------------------------------------------------------------------------


class Child:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def tell(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def hear(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"a load generator died: {self.proc.args}")
        return json.loads(line)

    def ask(self, **command: Any) -> Any:
        self.tell(**command)
        return self.hear()


def proc_cpu(pid: int, tid: int | None = None) -> float:
    """CPU seconds of a process, or of one of its threads (the event loop's is the pid)."""
    where = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = Path(where).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def seed(database: str, operators: int) -> None:
    from jivocore import HelpDesk
    from jivocore_webchat import WebChat, add_login

    desk = HelpDesk.open(database, plugins=[WebChat()])
    for j in range(operators):
        operator = desk.add_operator(f"Operator {j}", presence="offline")
        add_login(desk, operator.id, f"op{j}", PASSWORD)
    desk.shutdown()


class Side:
    """A server process and its load generators, seeded: operators online with their sockets
    open, visitors connected, each conversation accepted by its operator."""

    def __init__(self, kind: str, n: int, args: argparse.Namespace, tmp: Path) -> None:
        from jivocore_webchat.testing import free_port

        self.kind, self.n = kind, n
        self.database = str(tmp / f"{kind}-{n}.db")
        if kind == "engine":
            seed(self.database, args.operators)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        self.server = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                kind,
                str(port),
                self.database,
                str(args.operators),
            ]
        )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if time.monotonic() > deadline or self.server.poll() is not None:
                sys.exit(f"the {kind} server did not start")
            time.sleep(0.05)
        consoles = str(args.consoles and kind == "engine")
        self.operators = Child("--operators-client", base, kind, str(args.operators), consoles)
        step = args.per_process
        self.slices = [range(a, min(a + step, n)) for a in range(0, n, step)]
        self.visitors = [
            Child("--visitors-client", base, kind, str(s.start), str(s.stop)) for s in self.slices
        ]
        self.operators.ask(do="log_in")
        for child in self.visitors:
            child.tell(do="connect")
        refused = [e for child in self.visitors for e in child.hear()["errors"]]
        accepted = self.operators.ask(do="accept", n=n)["accepted"]
        if refused or (kind == "engine" and accepted != n):
            sys.exit(f"{kind}: seeding failed, accepted {accepted}/{n}, errors {refused[:3]}")
        # The peak while seeding (logins, connections); then the peak under load alone.
        self.seeding_rss = peak_rss_mb(self.server.pid)
        Path(f"/proc/{self.server.pid}/clear_refs").write_text("5")
        self.stored = n  # visitor messages the server acknowledged, the hellos included
        self.replied = 0

    def phase(self, seconds: float, rate: float, reply_rate: float) -> dict[str, Any]:
        start = time.monotonic() + 0.3
        pid = self.server.pid
        server_cpu, loop_cpu = proc_cpu(pid), proc_cpu(pid, pid)
        common = {"start": start, "seconds": seconds, "n": self.n}
        self.operators.tell(do="run", reply_rate=reply_rate, **common)
        for child in self.visitors:
            child.tell(do="run", rate=rate, **common)
        sent_replies = self.operators.hear()
        runs = [child.hear() for child in self.visitors]
        sent = {int(i): times for run in runs for i, times in run["sent"].items()}
        total = sum(map(len, sent.values()))
        got = self.operators.ask(do="collect", expected=total)
        wall = max(run["end"] for run in runs) - start
        server_cpu, loop_cpu = proc_cpu(pid) - server_cpu, proc_cpu(pid, pid) - loop_cpu
        replies: dict[str, float] = {}
        for child, visitors in zip(self.visitors, self.slices, strict=True):
            expected = sum(i in visitors for i, _ in sent_replies["replies"].values())
            replies.update(child.ask(do="replies", expected=expected)["replies"])
        problems = [f"refused: {run['errors']}" for run in runs if run["errors"]]
        latencies = []
        for i, times in sent.items():
            arrived = got["received"].get(str(i), [])
            if len(arrived) != len(times):
                problems.append(f"visitor {i}: sent {len(times)}, operator got {len(arrived)}")
            latencies += [b - a for a, b in zip(times, arrived, strict=False)]
        reply_latencies = []
        for tag, (_, at) in sent_replies["replies"].items():
            if tag in replies:
                reply_latencies.append(replies[tag] - at)
            else:
                problems.append(f"reply {tag} never reached its visitor")
        self.stored += total
        self.replied += len(sent_replies["replies"])
        return {
            "msgs/s": total / wall,
            "sent": total,
            "p50": pct(latencies, 0.5) * 1000,
            "p99": pct(latencies, 0.99) * 1000,
            "reply p50": pct(reply_latencies, 0.5) * 1000,
            "reply p99": pct(reply_latencies, 0.99) * 1000,
            "server cpu": server_cpu / wall,
            "loop cpu": loop_cpu / wall,
            "client cpu": (got["cpu"] + sum(run["cpu"] for run in runs)) / wall,
            "frames/msg": got["frames"] / max(total, 1),
            "reads/s": got["reads"] / wall,
            "problems": problems,
        }

    def close(self) -> dict[str, Any]:
        rss = peak_rss_mb(self.server.pid)
        for child in (self.operators, *self.visitors):
            child.tell(do="quit")
            child.proc.wait(30)
        self.server.send_signal(signal.SIGINT)  # uvicorn re-raises it: the desk shuts down
        problems = []
        if self.server.wait(30):
            problems.append(f"the server exited with {self.server.returncode}")
        if self.kind == "engine":
            from jivocore import HelpDesk, Message

            desk = HelpDesk.open(self.database)
            with desk.reading() as tx:
                clients = tx.count(Message, {"author": "client"})
                operators = tx.count(Message, {"author": "operator"})
            desk.shutdown()
            if (clients, operators) != (self.stored, self.replied):
                problems.append(
                    f"the database holds {clients} visitor and {operators} operator messages, "
                    f"{self.stored} and {self.replied} were acknowledged"
                )
        return {"peak rss": rss, "seeding rss": self.seeding_rss, "problems": problems}


def direct_receive(path: str, n: int, seconds: float) -> float:
    """`desk.receive` called directly on a SQLite file, into n open conversations: the storage
    cost per message without the web."""
    from jivocore import HelpDesk
    from jivocore_webchat import WebChat

    desk = HelpDesk.open(path, plugins=[WebChat()])
    for i in range(n):
        desk.receive("web", f"direct-{i}", f"hello {i}")
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        desk.receive("web", f"direct-{calls % n}", TEXT.format(i=calls % n, k=calls))
        calls += 1
    desk.shutdown()
    return calls / elapsed


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


ROWS = (  # (label, phase, key, format)
    ("saturating: msgs/s", "sat", "msgs/s", "{:,.0f}"),
    ("  send -> operator p50 ms", "sat", "p50", "{:.1f}"),
    ("  send -> operator p99 ms", "sat", "p99", "{:.1f}"),
    ("  server CPU (of one core)", "sat", "server cpu", "{:.0%}"),
    ("    its event loop's thread", "sat", "loop cpu", "{:.0%}"),
    ("  clients' CPU (all procs)", "sat", "client cpu", "{:.0%}"),
    ("  operator frames per msg", "sat", "frames/msg", "{:.1f}"),
    ("  consoles' Chats reads/s", "sat", "reads/s", "{:,.0f}"),
    ("at {rate} msgs/s: msgs/s", "rate", "msgs/s", "{:,.0f}"),
    ("  send -> operator p50 ms", "rate", "p50", "{:.1f}"),
    ("  send -> operator p99 ms", "rate", "p99", "{:.1f}"),
    ("  reply -> visitor p50 ms", "rate", "reply p50", "{:.1f}"),
    ("  reply -> visitor p99 ms", "rate", "reply p99", "{:.1f}"),
    ("  server CPU (of one core)", "rate", "server cpu", "{:.0%}"),
    ("  clients' CPU (all procs)", "rate", "client cpu", "{:.0%}"),
)


def run_size(args: argparse.Namespace, n: int, tmp: Path) -> list[str]:
    sides = {k: Side(k, n, args, tmp) for k in ("engine", "raw")}
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    direct = []
    problems: list[str] = []
    for kind, side in sides.items():  # warm up: the HTTP pools' connections, first calls
        warm = side.phase(1, args.rate, args.reply_rate)
        problems += [f"{kind} warm-up: {p}" for p in warm["problems"]]
    for r in range(args.rounds):
        order = ("engine", "raw") if r % 2 == 0 else ("raw", "engine")
        for phase, rate, reply_rate in (("sat", 0, 0), ("rate", args.rate, args.reply_rate)):
            for kind in order:
                result = sides[kind].phase(args.seconds, rate, reply_rate)
                problems += [f"{kind} {phase} round {r + 1}: {p}" for p in result["problems"]]
                results.setdefault((kind, phase), []).append(result)
        direct.append(direct_receive(str(tmp / f"direct-{n}-{r}.db"), n, min(args.seconds, 3)))
    closed = {k: side.close() for k, side in sides.items()}
    problems += [f"{k}: {p}" for k, c in closed.items() for p in c["problems"]]

    def median(kind: str, phase: str, key: str) -> float:
        return statistics.median(x[key] for x in results[(kind, phase)])

    def ratio(phase: str, key: str) -> float:
        """Both sides of a round saw the same load: the ratio per round, then its median."""
        pairs = zip(results[("engine", phase)], results[("raw", phase)], strict=True)
        return statistics.median(e[key] / w[key] for e, w in pairs)

    print(f"\n{n:,} visitors, {args.operators} operators, {args.rounds} rounds x {args.seconds} s")
    print(f"  {'':32} {'engine':>9} {'raw':>9} {'engine/raw':>11}")
    for label, phase, key, fmt in ROWS:
        if key == "reads/s" and not args.consoles:
            continue
        e, w = median("engine", phase, key), median("raw", phase, key)
        of = f"{ratio(phase, key):>11.0%}" if key == "msgs/s" else ""
        of = f"{ratio(phase, key):>10.1f}x" if label.endswith(" ms") else of
        print(f"  {label.format(rate=args.rate):32} {fmt.format(e):>9} {fmt.format(w):>9} {of}")
    rss = {k: c["peak rss"] for k, c in closed.items()}
    print(f"  {'server peak RSS MB, under load':32} {rss['engine']:>9.0f} {rss['raw']:>9.0f}")
    rss = {k: c["seeding rss"] for k, c in closed.items()}
    print(f"  {'  while seeding':32} {rss['engine']:>9.0f} {rss['raw']:>9.0f}")
    print(f"  {'desk.receive direct, calls/s':32} {statistics.median(direct):>9,.0f}")
    rates = [f"{x['msgs/s']:,.0f}" for x in results[("engine", "sat")]]
    raws = [f"{x['msgs/s']:,.0f}" for x in results[("raw", "sat")]]
    print(f"  saturating rounds: engine {', '.join(rates)}; raw {', '.join(raws)}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", default="200,1000", help="comma-separated sizes")
    parser.add_argument("--operators", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100, help="msgs/s of the latency phase")
    parser.add_argument("--reply-rate", type=float, default=20, help="operator replies/s")
    parser.add_argument("--per-process", type=int, default=500, help="visitors per client")
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--visitors-client", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument(
        "--consoles", action="store_true", help="operators re-read Chats on each live update"
    )
    parser.add_argument("--operators-client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_fd_limit()
    if args.serve:
        kind, port, database, operators = args.serve
        serve(kind, int(port), database, int(operators))
        return 0
    if args.visitors_client:
        base, kind, first, last = args.visitors_client
        asyncio.run(visitors_main(base, kind, int(first), int(last)))
        return 0
    if args.operators_client:
        base, kind, count, consoles = args.operators_client
        asyncio.run(operators_main(base, kind, int(count), consoles == "True"))
        return 0

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"webchat on loopback, python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    print(f"load average at start: {load}")
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.visitors.split(",")):
            problems += run_size(args, n, Path(tmp))
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if problems:
        print(f"\nLOST, DOUBLED OR REFUSED ({len(problems)}):\n  " + "\n  ".join(problems[:20]))
        return 2
    print("every message reached its operator once and is stored; every reply reached its visitor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
