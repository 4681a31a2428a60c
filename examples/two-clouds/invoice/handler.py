"""Runs in cloud B: bills each order that cloud A forwards, and answers with an invoice."""

from cloudevents.core.v1.event import CloudEvent


def handle(event):
    order = event.data
    total = sum(item["price"] * item["qty"] for item in order["items"])
    print(f"invoice for {event['id']} from {event['fmeshsender']}: {total:.2f}")
    return CloudEvent({"type": "com.shop.invoice.created", "source": "/cloud-b/invoice",
                       "subject": event["id"]}, {"order": event["id"], "total": round(total, 2)})
