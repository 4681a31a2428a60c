"""Tokens from `fmesh tokens create`: stored as their hash only, known again after a restart,
and gone at once when revoked."""

from __future__ import annotations

import pytest
from fmesh.broker.identity import Identity
from fmesh.broker.memory_state import MemoryState
from fmesh.broker.policy import Gate
from fmesh.broker.tokens import Tokens

from fmesh.errors import DeployError, Forbidden, RateLimited
from fmesh.events import new_event


@pytest.fixture
def log():
    return MemoryState()


def tokens_on(log) -> Tokens:
    identity = Identity()
    return Tokens(log, identity, Gate(identity, "required"))


async def test_a_token_is_stored_hashed_and_known_after_a_restart(log):
    tokens = tokens_on(log)
    record, token = await tokens.create("ci", "publish")
    stored = (await log.list("tokens/"))["tokens/ci"].value
    assert token.encode() not in stored and record.sha256.encode() in stored
    assert "sha256" not in record.public() and record.public()["scope"] == "publish"
    again = tokens_on(log)
    assert await again.load() == 1
    assert again._identity.bearer(token).name == "token:ci" and again._identity.bearer("other") is None


async def test_revoking_a_token_stops_it_at_once(log):
    tokens = tokens_on(log)
    _, token = await tokens.create("ci", "admin")
    assert await tokens.revoke("ci") and not await tokens.revoke("ci")
    assert tokens._identity.bearer(token) is None
    assert await log.list("tokens/") == {} and await tokens_on(log).load() == 0


async def test_bad_names_scopes_and_duplicates_are_refused(log):
    tokens = tokens_on(log)
    await tokens.create("ci", "read")
    refusals = (("CI!", "read", "not valid"), ("x", "root", "scope 'root'"), ("ci", "read", "already"))
    for name, scope, problem in refusals:
        with pytest.raises(DeployError, match=problem):
            await tokens.create(name, scope)


async def test_a_token_can_carry_an_allow_rule_and_a_rate(log):
    tokens = tokens_on(log)
    record, token = await tokens.create("ci", "publish", allow={"type": {"prefix": "com.ci."}}, rate=1.0)
    assert record.burst == 1
    principal = tokens._identity.bearer(token)
    gate = tokens._gate
    with pytest.raises(Forbidden, match="token:ci may not publish"):
        gate.permit(principal, [new_event("com.shop.x", "/s")])
    with pytest.raises(RateLimited):
        gate.admit(principal, {}, b"")


async def test_an_unreadable_token_record_is_skipped_not_fatal(log, caplog):
    await tokens_on(log).create("good", "read")
    await log.put("tokens/broken", b"{not json")
    assert await tokens_on(log).load() == 1
    assert "token broken is unreadable" in caplog.text


async def test_two_requests_for_one_token_name_make_one_token(log):
    import asyncio

    tokens = tokens_on(log)
    results = await asyncio.gather(*(tokens.create("race", "admin") for _ in range(5)), return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    assert len(made) == 1 and all(isinstance(r, DeployError) for r in results if r not in made)
    assert list(tokens.records) == ["race"]


async def test_a_token_revoked_elsewhere_unseen_is_forgotten_on_reconcile(log):
    here, there = tokens_on(log), tokens_on(log)  # two nodes on one store
    _, token = await here.create("ci", "publish")
    await there.load()
    assert await here.revoke("ci")  # `there` was not watching
    assert there._identity.bearer(token) is not None
    await there.reconcile()
    assert there._identity.bearer(token) is None and not there.records
