"""Coverage-guided fuzzing of the ingress with atheris (libFuzzer): each input becomes one
request (headers from a vocabulary or raw bytes, then the body) and must satisfy the same
oracle as the hypothesis targets. Run: python tests/broker/ingress_atheris.py -runs=100000
(libFuzzer flags apply); test_ingress_fuzz.py runs a bounded number."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import atheris

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]

with atheris.instrument_imports(include=["fmesh"]):
    from ingress_fuzz import Request, check_answer
    from test_ingress_fuzz import send

NAMES = [b"ce-specversion", b"ce-id", b"ce-source", b"ce-type", b"ce-time", b"ce-subject", b"content-type",
         b"ce-fmeshhops", b"ce-fmeshpath", b"ce-datacontenttype", b"ce-x", b"CE-ID", b"content-length"]
TYPES = [b"application/json", b"application/cloudevents+json", b"application/cloudevents-batch+json",
         b"text/plain", b""]
MODES = ["binary", "structured", "batch"]


def request_from(data: bytes) -> Request:
    provider = atheris.FuzzedDataProvider(data)
    mode = MODES[provider.ConsumeIntInRange(0, 2)]
    headers = []
    if mode == "binary":
        headers += [(b"ce-specversion", b"1.0"), (b"ce-id", b"a"), (b"ce-source", b"/a"), (b"ce-type", b"t")]
    else:
        headers.append((b"content-type", TYPES[1 if mode == "structured" else 2]))
    for _ in range(provider.ConsumeIntInRange(0, 6)):
        pick = provider.ConsumeIntInRange(0, len(NAMES))
        name = NAMES[pick] if pick < len(NAMES) else b"ce-" + provider.ConsumeBytes(8)
        value = TYPES[provider.ConsumeIntInRange(0, len(TYPES) - 1)] if name == b"content-type" \
            else provider.ConsumeBytes(provider.ConsumeIntInRange(0, 40))
        headers.append((name.lower(), bytes(c for c in value if c not in b"\r\n\0")))
    return Request([h for h in headers if h[0] != b"content-length"], provider.ConsumeBytes(1 << 16), mode)


def one_input(data: bytes) -> None:
    request = request_from(data)
    status, answer, stored = asyncio.run(send(request))
    check_answer(request, status, answer, stored)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
