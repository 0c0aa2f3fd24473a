"""jivocore_deals: Decimal amounts stored exactly, the pipeline, open/won/lost kept in the
client's open_deals, "create deal" from a conversation, listings and permissions."""

from __future__ import annotations

from decimal import Decimal

import pytest
from crmkit import BACKENDS, crm_desk, need_backend

import jivocore_deals as deals
from jivocore import InvalidTransition, PermissionDenied, ValidationError


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_deal_from_a_conversation_through_its_pipeline(backend, tmp_path):
    need_backend(backend)
    with crm_desk(backend, tmp_path, deal_pipeline=("new", "demo", "contract")) as desk:
        ann = desk.add_operator("Ann", presence="online")
        message = desk.receive("web", "v1", "how much?")
        desk.accept(message.conversation_id, ann.id)
        deal = deals.deal_from_conversation(
            desk, message.conversation_id, ann.id, "Annual plan", amount="1200.10", currency="eur"
        )
        assert (deal.amount, deal.currency, deal.stage, deal.status) == (
            Decimal("1200.10"),
            "EUR",
            "new",
            "open",
        )
        assert deals.get_deal(desk, deal.id, ann.id).amount == Decimal("1200.10")
        assert desk.client(deal.client_id).open_deals == 1
        with pytest.raises(ValidationError, match="demo, contract"):
            deals.update_deal(desk, deal.id, ann.id, stage="won")
        assert deals.update_deal(desk, deal.id, ann.id, stage="demo").stage == "demo"
        won = deals.set_status(desk, deal.id, ann.id, "won")
        assert won.closed is not None and desk.client(deal.client_id).open_deals == 0
        with pytest.raises(InvalidTransition):
            deals.update_deal(desk, deal.id, ann.id, title="more")
        deals.set_status(desk, deal.id, ann.id, "open")
        assert desk.client(deal.client_id).open_deals == 1
        listing = deals.find_deals(desk, ann.id, status="open")
        assert [d.id for d in listing.items] == [deal.id] and listing.count == 1


def test_operators_see_only_the_deals_of_their_clients(tmp_path):
    with crm_desk("sqlite", tmp_path) as desk:
        ann = desk.add_operator("Ann")
        bob = desk.add_operator("Bob")
        boss = desk.add_operator("Boss", role="manager")
        anns = desk.add_client("A", responsible_id=ann.id)
        bobs = desk.add_client("B", responsible_id=bob.id)
        deals.create_deal(desk, anns.id, ann.id, "a", amount=5)
        theirs = deals.create_deal(desk, bobs.id, bob.id, "b", amount=7)
        assert deals.find_deals(desk, ann.id).count == 1
        assert deals.find_deals(desk, boss.id).count == 2
        with pytest.raises(PermissionDenied):
            deals.get_deal(desk, theirs.id, ann.id)
        with pytest.raises(PermissionDenied):
            deals.create_deal(desk, bobs.id, ann.id, "sneaky")
        # Giving a deal to Ann lets her see the client.
        deals.create_deal(desk, bobs.id, boss.id, "shared", responsible_id=ann.id)
        assert deals.find_deals(desk, ann.id).count == 3
        with pytest.raises(ValidationError):
            deals.create_deal(desk, anns.id, ann.id, "x", amount="-1")
