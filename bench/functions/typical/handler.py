"""A typical Python event handler: validates its input with pydantic and answers with a
CloudEvent built by the SDK. The cold-start bench starts it from zero and, as the
baseline, in a fresh interpreter."""

import json

from cloudevents.core.v1.event import CloudEvent
from pydantic import BaseModel


class Order(BaseModel):
    name: str = "bench"
    amount: int = 0


def handle(event):
    order = Order.model_validate(event.data or {})
    return CloudEvent({"type": f"{event['type']}.reply", "source": "/bench/typical",
                       "datacontenttype": "application/json"}, json.loads(order.model_dump_json()))
