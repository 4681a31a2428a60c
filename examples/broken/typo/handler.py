"""hello, with a colon lost: `fmesh deploy -f examples/broken/typo.yaml` is refused, and the running hello stays."""

def handle(event)
    return {"greeting": "Hello!"}
