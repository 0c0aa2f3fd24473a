"""docs/lifecycle.md shows the transition table the engine applies, generated from it."""

import os
import re
from pathlib import Path

from jivocore.lifecycle import RULES, diagram

DOC = Path(__file__).resolve().parent.parent / "docs" / "lifecycle.md"
BEGIN = "<!-- generated from jivocore.lifecycle.RULES: do not edit by hand -->\n"
END = "<!-- end of generated part -->"


def test_docs_diagram_matches_the_transition_table():
    text = DOC.read_text(encoding="utf-8")
    head, _, rest = text.partition(BEGIN)
    generated, _, tail = rest.partition(END)
    if os.environ.get("JIVOCORE_UPDATE_DOCS") == "1":
        DOC.write_text(head + BEGIN + diagram() + END + tail, encoding="utf-8")
        generated = diagram()
    assert generated == diagram(), (
        "docs/lifecycle.md disagrees with jivocore.lifecycle.RULES; regenerate it with "
        "JIVOCORE_UPDATE_DOCS=1 python3 dev.py test tests/test_lifecycle_docs.py"
    )


def test_every_rule_appears_in_the_diagram():
    text = DOC.read_text(encoding="utf-8")
    for rule in RULES:
        for source in rule.sources:
            a = "[*]" if source is None else source.value
            b = (rule.target or source).value  # a rule from no conversation has a target
            assert re.search(rf"{re.escape(a)} --> {b}: {rule.command}\b", text), (a, b, rule)
