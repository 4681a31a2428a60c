"""CloudEvents protocol bindings, as pure functions over messages: HTTP, Kafka and NATS.

The cloudevents SDK does the wire formats it knows (HTTP, Kafka); the NATS binding,
which the SDK lacks, follows the CloudEvents NATS protocol binding spec. The broker,
the triggers and the sinks all read and write events through these modules.
"""
