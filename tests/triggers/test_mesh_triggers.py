"""Triggers and sinks through a whole `fmesh up`, deployed from manifests: Kafka in with a
SIGKILL midway, NATS out, a webhook with HMAC, and an unreachable broker that recovers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time

import httpx
import nats
from aiokafka import AIOKafkaProducer
from external import NatsServer, free_port
from support import ROOT, wait_for, write_manifest


def lines(path):
    return path.read_text().split() if path.exists() else []


def trigger_status(mesh, name):
    return next((t for t in mesh.api("GET", "/v1/status").json()["triggers"] if t["name"] == name), None)


async def produce(bootstrap: str, topic: str, count: int, on_sent=None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, f'{{"n": {i}}}'.encode(), key=f"k{i % 4}".encode())
            if on_sent:
                on_sent(i)
    finally:
        await producer.stop()


def test_every_kafka_record_reaches_the_function_across_a_sigkill(mesh_factory, tansu, tmp_path):
    out = tmp_path / "ids.txt"
    mesh = mesh_factory().start()
    manifest = write_manifest(tmp_path, f"""
triggers:
  orders:
    kafka: {{{{bootstrap: "{tansu.bootstrap}", topic: orders, group: fmesh-test, start: earliest,
             session_timeout: 2s}}}}
functions:
  append:
    handler: {{fixtures}}/append/handler.py:handle
    on: [{{{{type: dev.fmesh.kafka.message}}}}]
    env: {{{{APPEND_TO: "{out}"}}}}
""")
    assert "trigger orders created" in mesh.cli("deploy", "-f", str(manifest)).stdout
    asyncio.run(produce(tansu.bootstrap, "orders", 200))
    wait_for(lambda: len(set(lines(out))) >= 50, 60, message="the first records")
    mesh.kill()
    asyncio.run(produce(tansu.bootstrap, "orders", 200))  # more while the mesh is down
    mesh.start()
    wait_for(lambda: len(set(lines(out))) == 400, 90, interval=0.5,
             message="all 400 records (by topic-partition-offset id)")
    by_partition: dict[str, set[int]] = {}
    for record_id in set(lines(out)):
        topic, partition, offset = record_id.rsplit("-", 2)
        assert topic == "orders"
        by_partition.setdefault(partition, set()).add(int(offset))
    for offsets in by_partition.values():  # no gap: every offset of every partition arrived
        assert offsets == set(range(len(offsets)))
    status = trigger_status(mesh, "orders")
    assert status["state"] == "connected" and status["kind"] == "kafka"


def test_an_unreachable_broker_is_reported_by_url_and_recovers(mesh, tmp_path):
    port = free_port()
    out = tmp_path / "ids.txt"
    manifest = write_manifest(tmp_path, f"""
triggers:
  sensors:
    nats: {{{{url: "nats://127.0.0.1:{port}", subject: "sensors.>"}}}}
functions:
  append:
    handler: {{fixtures}}/append/handler.py:handle
    on: [{{{{type: dev.fmesh.nats.message}}}}]
    env: {{{{APPEND_TO: "{out}"}}}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    status = wait_for(lambda: (s := trigger_status(mesh, "sensors")) and s["state"] == "retrying" and s, 15,
                      message="the trigger to report its broker down")
    assert f"127.0.0.1:{port}" in status["last_error"]
    assert "retrying" in mesh.cli("status").stdout  # the mesh itself is fine and says so
    server = NatsServer(tmp_path / "nats", port=port).start()
    try:
        wait_for(lambda: trigger_status(mesh, "sensors")["state"] == "connected", 30, message="recovery")

        async def publish():
            client = await nats.connect(server.url)
            await client.publish("sensors.kitchen", b"21.5")
            await client.flush()
            await client.close()

        asyncio.run(publish())
        wait_for(lambda: lines(out), 15, message="the NATS message to reach the function")
    finally:
        server.stop()


def test_webhook_with_hmac_through_the_mesh(mesh_factory, tmp_path):
    out = tmp_path / "ids.txt"
    mesh = mesh_factory()
    mesh.env = (lambda base: lambda **more: {**base(**more), "HOOK_SECRET": "s3cret"})(mesh.env)
    mesh.start()
    manifest = write_manifest(tmp_path, f"""
triggers:
  github:
    http: {{{{path: /hooks/github, type_header: X-GitHub-Event, type_prefix: com.github.,
            id_header: X-GitHub-Delivery, auth: {{{{hmac_secret_env: HOOK_SECRET}}}}}}}}
functions:
  append:
    handler: {{fixtures}}/append/handler.py:handle
    on: [{{{{type: com.github.push}}}}]
    env: {{{{APPEND_TO: "{out}"}}}}
""")
    mesh.cli("deploy", "-f", str(manifest))
    body = b'{"ref": "refs/heads/main"}'
    good = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1", "content-type": "application/json"}
    hook = mesh.url + "/hooks/github"
    wrong = httpx.post(hook, content=body, headers={**headers, "X-Hub-Signature-256": "sha256=00"})
    assert wrong.status_code == 401
    missing = httpx.post(mesh.url + "/hooks/github", content=body, headers=headers)
    assert missing.status_code == 401
    ok = httpx.post(mesh.url + "/hooks/github", content=body, headers={**headers, "X-Hub-Signature-256": good})
    assert ok.status_code == 202
    wait_for(lambda: lines(out) == ["d-1"], 15, message="exactly the signed delivery")
    time.sleep(0.5)
    assert lines(out) == ["d-1"], "a refused webhook must publish nothing"


def test_the_kafka_to_nats_example_runs_as_its_readme_says(mesh_factory, tansu, nats_server, tmp_path):
    example = (ROOT / "examples/kafka-to-nats/fmesh.yaml").read_text()
    manifest = tmp_path / "fmesh.yaml"
    manifest.write_text(example.replace("127.0.0.1:9092", tansu.bootstrap)
                        .replace("nats://127.0.0.1:4222", nats_server.url))
    (tmp_path / "handler.py").write_text((ROOT / "examples/kafka-to-nats/handler.py").read_text())
    mesh = mesh_factory().start("-f", str(manifest))

    async def roundtrip() -> list:
        client = await nats.connect(nats_server.url)
        received: list = []

        async def collect(msg) -> None:
            received.append(msg)

        await client.subscribe("clicks.enriched", cb=collect)
        await client.flush()
        await produce(tansu.bootstrap, "clicks", 3)
        for _ in range(300):
            if len(received) >= 3:
                break
            await asyncio.sleep(0.1)
        await client.close()
        return received

    received = asyncio.run(roundtrip())
    assert len(received) == 3, mesh.log()
    assert all(m.headers and m.headers.get("ce-type") for m in received)


def test_the_cron_example_ticks_through_the_mesh(mesh_factory, tmp_path):
    example = (ROOT / "examples/cron/fmesh.yaml").read_text().replace("every: 10s", "every: 1s")
    (tmp_path / "fmesh.yaml").write_text(example)
    (tmp_path / "handler.py").write_text((ROOT / "examples/cron/handler.py").read_text())
    mesh = mesh_factory().start("-f", str(tmp_path / "fmesh.yaml"))
    wait_for(lambda: mesh.status("report").get("delivered", 0) >= 2, 20, message="two heartbeats")
    status = trigger_status(mesh, "heartbeat")
    assert status["kind"] == "timer" and status["events_in"] >= 2
    assert "com.example.heartbeat" in mesh.cli("logs", "report").stdout
    mesh.stop()  # a restart restores the timers (their tick state lives beside the deployed resources)
    mesh.start()
    assert "restored 3 deployed resources" in mesh.log()
    wait_for(lambda: (trigger_status(mesh, "heartbeat") or {}).get("events_in", 0) >= 1, 20,
             message="ticks after the restart")
