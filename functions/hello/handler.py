"""hello: logs each event it gets and replies with a greeting."""


def handle(event):
    name = event.data.get("name", "world") if isinstance(event.data, dict) else "world"
    print(f"hello got {event['type']} {event['id']} from {event['source']}: {event.data!r}")
    return {"greeting": f"Hello, {name}!"}
