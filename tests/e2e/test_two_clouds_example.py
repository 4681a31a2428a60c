"""examples/two-clouds as its README runs it: two meshes, bridges both ways, token auth."""

from __future__ import annotations

import json
import shutil

import httpx
from support import ROOT, wait_for

EXAMPLE = ROOT / "examples" / "two-clouds"


def test_an_order_crosses_to_billing_and_its_invoice_comes_back(mesh_factory, tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "two-clouds")
    secrets = {"A_TO_B_TOKEN": "a-to-b-token-for-the-test", "B_TO_A_TOKEN": "b-to-a-token-for-the-test"}
    a = mesh_factory(extra=["--mesh-id", "cloud-a", "--ingress-auth", "optional"], environ=secrets)
    b = mesh_factory(extra=["--mesh-id", "cloud-b", "--ingress-auth", "required"], environ=secrets)
    for name in ("cloud-a", "cloud-b"):  # the README's ports, made free ones
        path = tmp_path / "two-clouds" / f"{name}.yaml"
        path.write_text(path.read_text().replace("http://127.0.0.1:9080", "B_URL").replace(
            "http://127.0.0.1:8080", "A_URL").replace("B_URL", b.url).replace("A_URL", a.url))
    a.start("-f", str(tmp_path / "two-clouds" / "cloud-a.yaml"))
    b.start("-f", str(tmp_path / "two-clouds" / "cloud-b.yaml"))
    order = {"items": [{"sku": "tea", "price": 4.5, "qty": 2}, {"sku": "cup", "price": 9.0, "qty": 1}]}
    sent = a.cli("send", "--type", "com.shop.order.created", "--source", "/web", "--data", json.dumps(order),
                 "--id", "order-1", FMESH_TOKEN="")
    assert sent.stdout.split() == ["order-1", "202"], sent.stdout
    wait_for(lambda: "order order-1 invoiced: 18.0 (via cloud-b)" in a.cli("logs", "notify").stdout, 30,
             message="the invoice back in cloud A")
    assert "invoice for order-1 from peer:cloud-a: 18.00" in b.cli("logs", "invoice").stdout
    # Cloud B takes nothing unauthenticated, and cloud A takes no orders from cloud B.
    anonymous = httpx.post(b.url + "/", headers={"ce-specversion": "1.0", "ce-id": "x", "ce-source": "/x",
                                                 "ce-type": "com.shop.order.created"})
    assert anonymous.status_code == 401
    as_b = httpx.post(a.url + "/", headers={"ce-specversion": "1.0", "ce-id": "y", "ce-source": "/x",
                                            "ce-type": "com.shop.order.created",
                                            "authorization": f"Bearer {secrets['B_TO_A_TOKEN']}"})
    assert as_b.status_code == 403
