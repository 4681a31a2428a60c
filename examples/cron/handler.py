"""report: logs each timer tick it gets."""


def handle(event):
    print(f"tick {event['id']} at {event['time']}: {event['type']} {event.data!r} job={event.get('job')}")
