"""A handler with heavy imports: an HTTP client and a YAML parser the zygote does not
preload, and a 1 MB lookup table built at import. The cold-start bench starts it from
zero and, as the baseline, in a fresh interpreter."""

import hashlib

import httpx
import yaml

# 1 MB of table built when the module loads (what handlers do with a model, a schema or
# a price list): 16,384 rows of 64 bytes.
TABLE = {i: hashlib.blake2b(i.to_bytes(4, "big"), digest_size=32).hexdigest().encode()
         for i in range(16_384)}
CONFIG = yaml.safe_load("greeting: hello\nretries: 3\n")
CLIENT_TIMEOUT = httpx.Timeout(5.0)


def handle(event):
    row = TABLE[len(event["id"]) % len(TABLE)]
    return {"greeting": CONFIG["greeting"], "row": row[:8].decode(), "timeout": CLIENT_TIMEOUT.connect}
