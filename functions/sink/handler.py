"""sink: logs every event it gets and replies nothing (the end of a chain)."""


def handle(event):
    print(f"sink got {event['type']} {event['id']}: {event.data!r}")
