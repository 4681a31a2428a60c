"""The manifest models of triggers and sinks, and building triggers from them."""

from __future__ import annotations

import pytest
from fmesh.broker.memory_state import MemoryState
from fmesh.runtime.sinks import SinkOptions, open_sink
from fmesh.triggers.base import Trigger
from fmesh.triggers.config import HttpTriggerConfig, TriggerEntry
from fmesh.triggers.kafka import KafkaTrigger
from fmesh.triggers.kafka_client import client_options
from fmesh.triggers.nats import NatsTrigger
from fmesh.triggers.registry import build_trigger
from fmesh.triggers.timer import TimerTrigger
from fmesh.triggers.webhook import WebhookTrigger
from pydantic import ValidationError

from fmesh.errors import TriggerConfigError

EXAMPLES = {
    "kafka": {"kafka": {"bootstrap": "localhost:9092", "topic": "clicks"}},
    "nats": {"nats": {"url": "nats://localhost:4222", "subject": "sensors.>", "jetstream": True}},
    "timer": {"timer": {"cron": "0 3 * * *", "timezone": "Europe/Berlin"}},
    "http": {"http": {"path": "/hooks/github"}},
}


def errors(entry: dict) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        TriggerEntry.model_validate(entry)
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in caught.value.errors()]


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_each_kind_is_one_entry(kind):
    entry = TriggerEntry.model_validate(EXAMPLES[kind])
    assert entry.kind == kind and entry.config is getattr(entry, kind)


def test_durations_sizes_and_lists_are_read_as_people_write_them():
    kafka = TriggerEntry.model_validate({"kafka": {"bootstrap": "a:1,b:2", "topics": ["x", "y"],
                                                   "reconnect_max_delay": "PT1M"}}).config
    assert (kafka.bootstrap, kafka.topics, kafka.reconnect_max_delay) == (["a:1", "b:2"], ["x", "y"], 60.0)
    timer = TriggerEntry.model_validate({"timer": {"every": "1m30s"}}).config
    http = TriggerEntry.model_validate({"http": {"path": "/h", "max_body": "512KiB"}}).config
    assert (timer.every, http.max_body) == (90.0, 512 * 1024)
    assert TriggerEntry.model_validate({"timer": {"every": "10ms"}}).config.every == 0.01  # the fastest taken


@pytest.mark.parametrize("entry,where,says", [
    ({"kafka": {}, "timer": {"every": "1s"}}, "", "exactly one of kafka, nats, timer or http"),
    ({}, "", "exactly one"),
    ({"kafak": {"bootstrap": "x:1"}}, "kafak", "Extra inputs"),
    ({"kafka": {"bootstrap": "localhost", "topic": "t"}}, "kafka.bootstrap", "host:port"),
    ({"kafka": {"bootstrap": "h:1", "topic": "t", "security_protocol": "SASL_SSL"}}, "kafka", "sasl_mechanism"),
    ({"kafka": {"bootstrap": "h:1", "topic": "t", "password": "inline"}}, "kafka.password", "Extra inputs"),
    ({"nats": {"url": "nats://u:p@h:1", "subject": "s"}}, "nats.url", "without credentials"),
    ({"nats": {"subject": "s", "jetstream": {"mode": "pull"}, "queue": "q"}}, "nats", "queue"),
    ({"timer": {"every": "soon"}}, "timer.every", "200ms, 5s"),
    ({"timer": {"cron": "61 * * * *"}}, "timer.cron", "not a valid cron"),
    ({"timer": {"every": "1ms"}}, "timer.every", "every 1ms is too fast for a timer: give at least 10ms"),
    ({"timer": {"cron": "0 0 30 2 *"}}, "timer.cron", "never fires"),  # the 30th of February
    ({"timer": {"every": "5s", "timezone": "Mars/Olympus"}}, "timer.timezone", "unknown time zone"),
    ({"timer": {"every": "5s", "cron": "* * * * *"}}, "timer", "exactly one of cron or every"),
    ({"timer": {"every": "5s", "extensions": {"Bad-Name": "x"}}}, "timer.extensions.Bad-Name", "pattern"),
    ({"http": {"path": "hooks"}}, "http.path", "pattern"),
    *[({"http": {"path": path}}, "http.path", "served by the mesh itself") for path in (
        "//", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/healthz", "/ui",
        "/ui/app.js", "/v1", "/v1/apply", "/v1/functions/x/logs", "/metrics/", "/%76%31/apply")],
    ({"http": {"path": "/h", "auth": {}}}, "http.auth", "bearer_env, hmac_secret_env"),
    ({"http": {"path": "/h", "auth": {"bearer_env": "T", "timestamp_header": "X-T"}}}, "http.auth",
     "timestamp_header needs hmac_secret_env"),
])
def test_mistakes_are_named_by_field(entry, where, says):
    found = errors(entry)
    assert any(loc.startswith(where) and says in msg for loc, msg in found), found


def test_the_schema_can_be_generated_for_editors():
    schema = TriggerEntry.model_json_schema()
    assert {"kafka", "nats", "timer", "http"} <= set(schema["properties"])


async def test_build_trigger_picks_the_implementation_by_kind():
    kinds = {"kafka": KafkaTrigger, "nats": NatsTrigger, "timer": TimerTrigger, "http": WebhookTrigger}

    async def publish(events):
        pass

    for kind, cls in kinds.items():
        trigger = build_trigger(kind, TriggerEntry.model_validate(EXAMPLES[kind]), publish, MemoryState())
        assert isinstance(trigger, cls) and isinstance(trigger, Trigger)
        assert trigger.status().state == "stopped" and trigger.status().kind == kind
    webhook = build_trigger("gh", TriggerEntry.model_validate(EXAMPLES["http"]).config, publish, MemoryState())
    assert webhook.path == "/hooks/github" and callable(webhook.app)


def test_secrets_come_from_the_environment_and_missing_ones_name_the_field(monkeypatch):
    entry = TriggerEntry.model_validate({"kafka": {
        "bootstrap": "h:1", "topic": "t", "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
        "username_env": "KAFKA_USER", "password_env": "KAFKA_PASSWORD"}})
    monkeypatch.setenv("KAFKA_USER", "alice")
    monkeypatch.delenv("KAFKA_PASSWORD", raising=False)
    with pytest.raises(TriggerConfigError, match=r"triggers\.clicks\.kafka\.password_env.*KAFKA_PASSWORD"):
        build_trigger("clicks", entry, None, MemoryState())  # type: ignore[arg-type]
    monkeypatch.setenv("KAFKA_PASSWORD", "pw")
    options = client_options(entry.config, "triggers.clicks.kafka")
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "SCRAM-SHA-512", "alice", "pw")


def test_missing_tls_files_name_the_field(tmp_path):
    entry = TriggerEntry.model_validate({"nats": {"subject": "s", "tls_ca": str(tmp_path / "nope.pem")}})
    with pytest.raises(TriggerConfigError, match=r"triggers\.s\.nats\.tls_ca.*nope\.pem"):
        build_trigger("s", entry, None, MemoryState())  # type: ignore[arg-type]


def test_sink_options_validate_like_trigger_options():
    with pytest.raises(ValidationError):
        SinkOptions.model_validate({"kafka": {"security_protocol": "SASL_SSL"}})
    with pytest.raises(ValueError, match="gopher://x"):
        open_sink("gopher://x", {})


def test_a_creds_file_says_what_it_needs(tmp_path):
    import importlib.util
    if importlib.util.find_spec("nkeys") is not None:
        pytest.skip("nkeys is installed: .creds files work")
    creds = tmp_path / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n...\n")
    entry = TriggerEntry.model_validate({"nats": {"subject": "s", "credentials": str(creds)}})
    with pytest.raises(TriggerConfigError, match=r"triggers\.s\.nats\.credentials.*nkeys"):
        build_trigger("s", entry, None, MemoryState())  # type: ignore[arg-type]


def test_paths_near_the_mesh_own_are_free_for_webhooks():
    for path in ("/hooks/metrics", "/docsify", "/v2/hook", "/uikit", "/hooks/v1"):
        assert HttpTriggerConfig(path=path).path == path
