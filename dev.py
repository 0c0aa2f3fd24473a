#!/usr/bin/env python3
"""The quick start: `python3 dev.py serve` runs a demo help desk in the browser, `python3 dev.py
test` runs the tests; `python3 dev.py demo` plays a scripted day in the terminal instead.

Each makes a virtual environment in .venv and installs jivocore into it (editable, with the
test and development extras) the first time, and again whenever pyproject.toml changes. Only
Python 3.11+ with pip is assumed. Extra arguments go to the command: `python3 dev.py test -x`,
`python3 dev.py serve --port 8080`. `serve` starts from a fresh demo-web.db every time, so the
operators' passwords it prints are always the ones that work.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def ensure_installed() -> None:
    python = BIN / "python"
    if not python.exists():
        print("dev.py: creating .venv", flush=True)
        venv.create(VENV, with_pip=True)
    stamp = VENV / ".jivocore-installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != wanted:
        print("dev.py: installing jivocore and its development extras into .venv", flush=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "--editable", f"{ROOT}[dev]"], check=True)
        stamp.write_text(wanted)


def main(argv: list[str]) -> int:
    commands = {
        "serve": [str(BIN / "jivocore"), "--db", "demo-web.db", "serve", "--demo"],
        "demo": [str(BIN / "jivocore"), "demo", "--db", "demo.db", "--replace"],
        "test": [str(BIN / "python"), "-m", "pytest"],
    }
    if not argv or argv[0] not in commands:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on whatever python3 there is
        print("dev.py: jivocore needs Python 3.11 or newer", file=sys.stderr)
        return 2
    ensure_installed()
    if argv[0] == "serve":
        for stale in ROOT.glob("demo-web.db*"):  # the database and its WAL files
            stale.unlink()
    try:
        return subprocess.run([*commands[argv[0]], *argv[1:]], cwd=ROOT).returncode
    except KeyboardInterrupt:  # Ctrl-C stops the server: not an error
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
