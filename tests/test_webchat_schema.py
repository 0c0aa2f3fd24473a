"""schemathesis against the web chat's OpenAPI document, on a real uvicorn server on loopback
with a logged-in admin and a visitor: no 500s, every 4xx and 5xx has a JSON error body, and
every answer conforms to the document (status, content type, headers, schema)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

import jivocore_deals
import jivocore_tasks
from jivocore import HelpDesk
from jivocore_webchat import WebChat, make_app, openapi
from jivocore_webchat.cli import seed_demo
from jivocore_webchat.testing import running

accepted = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # the check's default


class Tokens:
    """The bearer tokens the run uses; a case that logs the admin out gets a new one."""

    def __init__(self, base: str, login: str, password: str) -> None:
        self.base, self.login, self.password = base, login, password
        self.operator = self.log_in()
        self.visitor = httpx.post(base + "/api/visitor/session").json()["token"]

    def log_in(self) -> str:
        r = httpx.post(
            self.base + "/api/login", json={"login": self.login, "password": self.password}
        )
        assert r.status_code == 200, r.text
        token: str = r.json()["token"]
        return token

    def renew(self) -> None:
        """After a case that logged out or revoked the admin's tokens."""
        r = httpx.get(self.base + "/api/me", headers={"Authorization": f"Bearer {self.operator}"})
        if r.status_code == 401:
            self.operator = self.log_in()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Tokens]]:
    web = WebChat()
    path = tmp_path_factory.mktemp("schema") / "desk.db"
    desk = HelpDesk.open(str(path), plugins=[web])
    made = seed_demo(desk)
    ann = next(o for o in desk.operators() if o.name == "Ann")
    client_id = desk.archive(ann.id).items[0].client_id  # so the CRM lists have items
    jivocore_deals.create_deal(desk, client_id, ann.id, "Forty chairs", amount="1200.50")
    jivocore_tasks.create_task(desk, client_id, ann.id, "Send the quote", desk.clock.now())
    with running(make_app(desk, web)) as base:
        yield base, Tokens(base, "ann", made[0][2])
    desk.shutdown()


# What JSON Schema cannot say: a listing's `after` is a cursor a previous page gave, an import's
# body must be a CSV file with a recognisable header, and a socket's path wants an upgrade.
# For those, a 422 (or 426) is the right answer to a schema-valid request.
CONFIG = schemathesis.Config.from_dict(
    {
        "operations": [
            {
                "include-path-regex": pattern,
                "checks": {"positive_data_acceptance": {"expected-statuses": [*accepted, status]}},
            }
            for pattern, status in (
                ("^/api/(archive|clients|deals|tasks)$", 422),
                ("^/api/clients/import$", 422),
                ("^/api/(visitor|operator)/ws$", 426),
            )
        ]
    }
)

# The document is static (made from the endpoint table), so the operations are known when the
# tests are collected; the served copy is checked equal to it below.
schema = schemathesis.openapi.from_dict(openapi(), config=CONFIG)


def errors_are_json(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx and 5xx answer is the API's JSON error."""
    if response.status_code < 400:
        return
    body = json.loads(response.content)
    assert set(body) == {"error", "message", "status"}, body
    assert body["status"] == response.status_code, body
    assert response.headers["content-type"][0].startswith("application/json")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_the_api_keeps_its_openapi_document(case: Any, served: tuple[str, Tokens]) -> None:
    base, tokens = served
    token = tokens.visitor if case.path.startswith("/api/visitor/") else tokens.operator
    # A real token where the case carries one; a case made without it (testing that a request
    # without credentials is refused) is sent as it was made.
    made = case.headers or {}
    headers = {"Authorization": f"Bearer {token}"} if "Authorization" in made else {}
    response = case.call_and_validate(
        base_url=base, headers=headers, additional_checks=[errors_are_json]
    )
    assert response.status_code < 500
    if case.path in ("/api/logout", "/api/operators/{operator_id}/revoke"):
        tokens.renew()


def test_the_served_document_is_the_one_tested(served: tuple[str, Tokens]) -> None:
    base, _ = served
    document = httpx.get(base + "/openapi.json").json()
    assert document == json.loads(json.dumps(openapi()))
    text = json.dumps(document)
    for name in document["components"]["schemas"]:
        assert f'"#/components/schemas/{name}"' in text or name == "Error"
    refs = {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}
    assert refs <= set(document["components"]["schemas"])
