"""Inbound email over SMTP on loopback: emails per second into a SQLite desk, beside the rate at
which the same aiosmtpd server merely accepts and discards them, in the same run.

Each round sends the same prebuilt emails with smtplib over one SMTP connection, first to one
side then the other (the order alternates between rounds); every figure is a median of rounds.

    python bench/smtp_inbound.py                      # 300 emails x 5 rounds
    python bench/smtp_inbound.py --emails 1000 --rounds 7
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from jivocore import HelpDesk, Message
from jivocore_email import EmailChannel, SMTPServer

DESK = "support@desk.test"


class Discard:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 OK"


def emails(n: int, round_: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        sender = f"client{i % (n // 2 or 1)}@example.com"  # half the emails continue a thread
        mail = EmailMessage()
        mail["From"] = f"Client {i} <{sender}>"
        mail["To"] = DESK
        mail["Subject"] = f"Question {i}"
        mail["Message-ID"] = f"<r{round_}-m{i}@example.com>"
        mail.set_content(f"Hello, this is question {i}. " * 5)
        out.append((sender, mail.as_bytes()))
    return out


def send_all(port: int, batch: list[tuple[str, bytes]]) -> float:
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        for sender, raw in batch:
            smtp.sendmail(sender, [DESK], raw)
    return time.perf_counter() - started


def into_desk(batch: list[tuple[str, bytes]], folder: Path) -> float:
    channel = EmailChannel(DESK, listen_port=0)
    desk = HelpDesk.open(str(folder / "desk.db"), plugins=[channel])
    desk.start_channels()
    try:
        seconds = send_all(channel.port, batch)
        with desk.reading() as tx:
            stored = tx.count(Message)
        if stored != len(batch):
            sys.exit(f"the desk stored {stored} of {len(batch)} emails")
        return seconds
    finally:
        desk.stop_channels()
        desk.shutdown()


def discarded(batch: list[tuple[str, bytes]]) -> float:
    server = SMTPServer(Discard(), "127.0.0.1", 0)
    server.start()
    try:
        return send_all(server.port, batch)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emails", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    desk_rates, raw_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            batch = emails(args.emails, r)
            folder = Path(tmp) / f"round{r}"
            folder.mkdir()
            for side in ("desk", "raw") if r % 2 == 0 else ("raw", "desk"):
                if side == "desk":
                    desk_rates.append(args.emails / into_desk(batch, folder))
                else:
                    raw_rates.append(args.emails / discarded(batch))
    desk_rate, raw_rate = statistics.median(desk_rates), statistics.median(raw_rates)
    print(f"inbound email over SMTP on loopback, {args.emails} emails x {args.rounds} rounds")
    print(f"  into a SQLite desk      {desk_rate:8.0f} emails/s (median)")
    print(f"  accepted and discarded  {raw_rate:8.0f} emails/s (median)")
    print(f"  desk / discard          {desk_rate / raw_rate:8.0%}")


if __name__ == "__main__":
    main()
