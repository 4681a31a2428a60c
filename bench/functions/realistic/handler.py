"""A handler shaped like real ones, for the cold-start figure: it imports json, pydantic
and the cloudevents SDK at module level, validates the event's data with a model, and
replies with a CloudEvent of its own (`<type>.reply`, which bench/coldstart.py waits for)."""

import json
import uuid

from cloudevents.core.v1.event import CloudEvent
from pydantic import BaseModel, Field


class Greeting(BaseModel):
    name: str = Field(min_length=1, max_length=100)


def handle(event):
    greeting = Greeting.model_validate(event.data)
    return CloudEvent({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/bench/realistic",
                       "type": f"{event['type']}.reply", "datacontenttype": "application/json"},
                      {"greeting": f"Hello, {greeting.name}!", "fields": json.dumps(sorted(event))})
