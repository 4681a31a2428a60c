"""Several nodes on one store, in one process: what one node deploys, every node runs
(with code only the first node had on disk), deletes follow, and every node is seen."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from fmesh.broker.stores import open_store
from fmesh.deploy.control import ControlPlane
from fmesh.deploy.node import Node
from fmesh.deploy.server import deploy_local

from fmesh.events import new_event
from fmesh.settings import NodeSettings

MANIFEST = """\
functions:
  hello:
    handler: hello/handler.py:handle
    on:
      - type: com.example.hello
"""
HANDLER = "def handle(event):\n    return {'greeting': 'hi ' + event.data['name']}\n"


async def until(condition, what: str, timeout: float = 5.0) -> float:
    """Seconds it took for `condition()` to hold; fails naming `what` after `timeout`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
async def nodes(tmp_path: Path):
    """Three started nodes (with their control planes) on one shared store."""
    store = open_store("memory://", tmp_path)
    store.shared = True
    await store.open()
    started = []
    for n in range(3):
        node = Node(NodeSettings(tmp_path / f"node{n}", port=9000 + n), store=store)
        control = ControlPlane(node)
        await node.start()
        await control.restore()
        node.run_in_background("follow", control.follow())
        started.append((node, control))
    yield started
    for node, _ in started:
        node.store = _Unclosed(store)  # the store is shared: close it once, below
        await node.stop(grace=2)
    await store.close()


class _Unclosed:
    def __init__(self, store) -> None:
        self._store = store

    async def close(self) -> None:
        pass


async def test_a_deploy_to_one_node_runs_on_every_node_and_a_delete_stops_it(nodes, tmp_path):
    project = tmp_path / "project"
    (project / "hello").mkdir(parents=True)
    (project / "hello" / "handler.py").write_text(HANDLER)
    (project / "fmesh.yaml").write_text(MANIFEST)
    (first, first_control), *others = nodes
    await deploy_local(first_control, project / "fmesh.yaml")

    took = await until(lambda: all("hello" in control.functions for _, control in others), "the other nodes")
    assert took < 5
    for node, control in others:
        digest = control.functions["hello"].bundle
        assert (node.data_dir / "bundles" / digest / "handler.py").read_text() == HANDLER
        assert [s.name for s in node.function_status()] == ["hello"]

    await others[0][0].broker.publish([new_event("com.example.hello", "/t", {"name": "ann"})])
    await until(lambda: sum(s.delivery.delivered for n, _ in nodes for s in n.function_status()) == 1,
                "the event delivered once, by whichever node", timeout=20)

    assert await first_control.delete("function", "hello")
    await until(lambda: all(not control.functions and not node.function_status() for node, control in nodes),
                "every node to stop hello")


async def test_every_node_is_seen_with_its_heartbeat(nodes):
    node = nodes[0][0]
    listed = await node.nodes()
    assert sorted(n["id"] for n in listed) == sorted(n.node_id for n, _ in nodes)
    assert all(n["state"] == "up" and n["address"].startswith("http://127.0.0.1:90") for n in listed)


EXTERNAL = """\
functions:
  orders:
    external: true
    on:
      - type: com.example.order
    timeout: 2s
    delivery: {retries: 2, delay: 50ms}
subscriptions:
  audit:
    filter: {type: com.example.order.done}
    to: %s/audit
"""


async def test_a_sidecar_delivers_an_external_function_no_node_runs(nodes, tmp_path):
    from support import Receiver

    target = Receiver()
    reply = {"ce-specversion": "1.0", "ce-id": "done-1", "ce-source": "/orders", "ce-type": "com.example.order.done"}
    target.script("/orders", (503,), (200, reply, b""))  # fails once, then answers with a reply event
    store = nodes[0][0].store
    sidecar = Node(NodeSettings(tmp_path / "sidecar", port=9100), store=store, address="sidecar")
    sidecar.external_targets["orders"] = f"{target.url}/orders"
    sidecar_control = ControlPlane(sidecar, serves="orders")
    await sidecar.start()
    await sidecar_control.restore()
    sidecar.run_in_background("follow", sidecar_control.follow())
    try:
        project = tmp_path / "project"
        project.mkdir()
        (project / "fmesh.yaml").write_text(EXTERNAL % target.url)
        await deploy_local(nodes[0][1], project / "fmesh.yaml")
        await until(lambda: "orders" in sidecar_control.functions, "the sidecar to see the deploy")
        assert all(not node.function_status() for node, _ in nodes)  # no node runs it

        await nodes[1][0].broker.publish([new_event("com.example.order", "/shop", {"n": 1})])
        await until(lambda: len(target.to("/audit")) == 1, "the reply routed to the audit subscription",
                    timeout=15)
        assert len(target.to("/orders")) == 2  # the delivery policy retried the 503
        assert target.to("/audit")[0]["headers"]["ce-id"] == "done-1"
        assert not sidecar.function_status()  # delivered, not run: no replicas anywhere
    finally:
        sidecar.store = _Unclosed(store)
        await sidecar.stop(grace=2)
        target.close()


async def test_nodes_on_one_store_are_one_mesh_to_their_peers(tmp_path):
    from fmesh.errors import StartupError

    store = open_store("memory://", tmp_path)
    store.shared = True
    first = Node(NodeSettings(tmp_path / "a", mesh_id="mesh-a"), store=store)
    joiner = Node(NodeSettings(tmp_path / "b", mesh_id="mesh-b"), store=store)  # read from its data dir
    insisting = Node(NodeSettings(tmp_path / "c", mesh_id="mesh-c", mesh_id_given=True), store=store)
    await first.start()
    try:
        await joiner.start()
        assert joiner.mesh_id == joiner.broker.mesh_id == joiner.runtime.mesh_id == "mesh-a"
        assert (tmp_path / "b" / "mesh-id").read_text().strip() == "mesh-a"  # kept for its next start
        with pytest.raises(StartupError, match="belongs to mesh 'mesh-a'"):
            await insisting.start()
    finally:
        for node in (joiner, first):
            node.store = _Unclosed(store)
            await node.stop(grace=1)
        await insisting.runtime.stop(1)


async def test_a_token_made_on_one_node_works_on_every_node_until_revoked(nodes):
    (first, _), (second, _), _ = nodes
    record, token = await first.tokens.create("ci", "publish")
    await until(lambda: second.identity.bearer(token) is not None, "node 2 to know the token")
    assert second.identity.bearer(token).name == "token:ci"
    assert await first.tokens.revoke("ci")
    await until(lambda: second.identity.bearer(token) is None, "node 2 to forget the token")


async def test_a_mesh_id_in_the_store_that_is_not_one_stops_the_start_with_a_line(tmp_path):
    from fmesh.errors import StartupError

    store = open_store("memory://", tmp_path)
    await store.state.put("mesh/id", b"../../etc \xff")
    node = Node(NodeSettings(tmp_path / "a", mesh_id="mesh-a"), store=store)
    with pytest.raises(StartupError, match="holds 'mesh/id'"):
        await node.start()
    await node.runtime.stop(1)


async def test_events_waiting_for_an_external_function_survive_nodes_joining_and_redeploys(nodes, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "fmesh.yaml").write_text("functions:\n  orders:\n    external: true\n    on: [{type: o}]\n")
    (first, first_control), (second, _), _ = nodes
    await deploy_local(first_control, project / "fmesh.yaml")
    await until(lambda: all("orders" in c.functions for _, c in nodes), "every node to route orders")
    await second.broker.publish([new_event("o", "/shop", {"n": n}) for n in range(5)])
    joiner = Node(NodeSettings(tmp_path / "joiner", port=9200), store=first.store)
    control = ControlPlane(joiner)
    await joiner.start()
    try:
        await control.restore()
        (project / "fmesh.yaml").write_text("functions:\n  orders:\n    external: true\n    on: [{type: o}]\n"
                                            "    timeout: 9s\n")
        await deploy_local(first_control, project / "fmesh.yaml")  # a redeploy reaches every node
        await until(lambda: all(c.functions["orders"].spec.timeout == 9 for _, c in nodes), "the redeploy")
        assert await first.pending("function:orders") == 5  # still waiting for their sidecar
    finally:
        joiner.store = _Unclosed(first.store)
        await joiner.stop(grace=1)


def write_hello(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "hello").mkdir(parents=True, exist_ok=True)
    (project / "hello" / "handler.py").write_text(HANDLER)
    (project / "fmesh.yaml").write_text(MANIFEST)
    return project / "fmesh.yaml"


async def test_a_delete_made_while_a_node_was_not_watching_is_found_by_reconciling(nodes, tmp_path):
    (first, first_control), *_ = nodes
    await deploy_local(first_control, write_hello(tmp_path))
    late = Node(NodeSettings(tmp_path / "late", port=9300), store=first.store)
    control = ControlPlane(late)
    await late.start()
    try:
        await control.restore()  # runs hello; this node does not watch (as between restore and watch)
        assert "hello" in control.functions
        assert await first_control.delete("function", "hello")
        await control.reconcile()
        assert not control.functions and not late.function_status()
    finally:
        late.store = _Unclosed(first.store)
        await late.stop(grace=1)


async def test_a_delete_stops_an_old_version_left_running_beside_a_broken_update(nodes, tmp_path):
    (first, first_control), (second, second_control), _ = nodes
    await deploy_local(first_control, write_hello(tmp_path))
    await until(lambda: "hello" in second_control.functions, "node 2 to run hello")
    second_control.broken["function/hello"] = "its new version could not start here"  # v2 failed on node 2 only
    assert await first_control.delete("function", "hello")
    await until(lambda: not second.function_status() and "hello" not in second_control.functions,
                "node 2 to stop the old version too")
    assert not second_control.broken


async def test_a_sidecar_started_before_any_node_does_not_claim_the_mesh_id(tmp_path):
    store = open_store("memory://", tmp_path)
    sidecar = Node(NodeSettings(tmp_path / "sidecar"), store=store)  # no mesh id of its own
    node = Node(NodeSettings(tmp_path / "node", mesh_id="mesh-a"), store=store)
    await sidecar.start()
    try:
        assert await store.state.get("mesh/id") is None
        await node.start()
        assert node.mesh_id == "mesh-a"
    finally:
        for started in (sidecar, node):
            started.store = _Unclosed(store)
            await started.stop(grace=1)
