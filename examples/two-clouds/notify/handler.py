"""Runs in cloud A: tells the shop that an invoice came back from cloud B."""


def handle(event):
    print(f"order {event.data['order']} invoiced: {event.data['total']} (via {event['fmeshpath']})")
