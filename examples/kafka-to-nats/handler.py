"""enrich: turns a raw click record from Kafka into a tidy page-view reply."""

from urllib.parse import urlsplit


def handle(event):
    click = event.data if isinstance(event.data, dict) else {"raw": event.data}
    page = urlsplit(click.get("url", "/")).path or "/"
    print(f"enrich got record {event['id']} (key {event.get('partitionkey')}): {click!r}")
    return {"user": click.get("user", "anonymous"), "page": page, "record": event["id"]}
