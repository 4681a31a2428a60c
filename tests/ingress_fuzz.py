"""Requests to fuzz the ingress with, and the one oracle every answer must satisfy.

Requests come from a grammar (binary, structured and batch events whose parts are drawn
from what is valid, nearly valid and hostile: header case, duplicates, encodings, content
types with parameters, sizes, nesting, lone surrogates, numbers past every range, times
RFC 3339 allows and ones it does not) and from mutating valid requests (bytes flipped,
cut or inserted, headers dropped or repeated). `check_answer` is the oracle: never a 5xx,
every refusal a 4xx with a message, and every 202'd event stored exactly as sent.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fmesh.bindings.http import read_events, write_binary
from fmesh.events import Event

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
REFUSALS = {400, 413, 415, 431}


def fuzz_timeout() -> float:
    """pytest-timeout for a fuzz test: none when FMESH_FUZZ_EXAMPLES asks for a long run."""
    return 0 if os.environ.get("FMESH_FUZZ_EXAMPLES") else 300


def fuzz_settings(ci_examples: int) -> settings:
    """`ci_examples` in CI (derandomized, so a failure repeats); FMESH_FUZZ_EXAMPLES=N runs N random ones."""
    wanted = os.environ.get("FMESH_FUZZ_EXAMPLES")
    return settings(max_examples=int(wanted) if wanted else ci_examples, derandomize=not wanted, deadline=None,
                    suppress_health_check=list(HealthCheck), database=None)


@dataclass
class Request:
    headers: list[tuple[bytes, bytes]]
    body: bytes
    mode: str = "binary"
    notes: list[str] = field(default_factory=list)

    def header_map(self) -> dict[str, str]:
        """As the ingress reads them: lowercase names, the last of repeated ones wins."""
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.headers}


# -- pieces -----------------------------------------------------------------------------

header_safe = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c not in b"\r\n\0"))
names = st.one_of(st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True), st.text(max_size=25),
                  st.sampled_from(["time", "subject", "dataschema", "datacontenttype", "fmeshhops", "fmeshpath",
                                   "fmeshsender", "fmeshattempts", "data", "data_base64", "ID", "Type"]))
texts = st.one_of(st.text(max_size=30), st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
                  st.sampled_from(["\ud800", "a\udfffb", "%", "%zz", "%c3%28", "%e2%82%ac", "\x00", "\x1b[2J", " "]))
times = st.one_of(
    st.from_regex(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d{1,20})?([Zz]|[+-]\d\d:\d\d)", fullmatch=True),
    st.sampled_from(["2016-12-31T23:59:60Z", "2026-01-01T00:00:00.123456789Z", "²026-01-01T00:00:00Z", "",
                     "2026-02-30T00:00:00Z", "yesterday", "2026-01-01T00:00:00"]),
    texts)
numbers = st.one_of(st.integers(), st.integers(-(2**31), 2**31 - 1), st.floats(allow_nan=True),
                    st.sampled_from([2**31, -(2**31) - 1, 2**63, 10**400]))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=30)
content_types = st.one_of(
    st.sampled_from(["application/json", "text/plain", "application/octet-stream", "application/xml",
                     "application/cloudevents+json", "application/cloudevents-batch+json",
                     "APPLICATION/CloudEvents+JSON; charset=utf-8", "application/cloudevents+json;", "",
                     "text/plain; charset=latin-1", "multipart/form-data; boundary=x", "application/json; x=\"y\""]),
    st.text(max_size=30))


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_data() -> st.SearchStrategy[str]:
    return st.integers(0, 1200).map(deep)


def encode_header(value: str) -> bytes:
    """A value as a careful sender puts it in a `ce-*` header: percent-encoded UTF-8."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="").encode("ascii")


# -- binary mode ------------------------------------------------------------------------

@st.composite
def binary_requests(draw) -> Request:
    attributes = {"specversion": draw(st.sampled_from(["1.0", "1.0", "0.3", "", "2"])),
                  "id": draw(st.one_of(st.text(min_size=1, max_size=20), texts)),
                  "source": draw(st.one_of(st.just("/fuzz"), texts)), "type": draw(st.one_of(st.just("fuzz"), texts))}
    for name in draw(st.lists(names, max_size=6)):
        attributes[name] = draw(st.one_of(texts, times, numbers.map(str)))
    if draw(st.booleans()):
        attributes["time"] = draw(times)
    headers = []
    for name, value in attributes.items():
        header = draw(st.sampled_from(["ce-", "CE-", "Ce-"])) + name
        raw = draw(st.one_of(st.just(encode_header(value)), header_safe,
                             st.just(value.encode("utf-8", "surrogatepass"))))
        try:
            headers.append((header.encode("latin-1"), bytes(c for c in raw if c not in b"\r\n\0")))
        except UnicodeEncodeError:
            continue
    if draw(st.booleans()):
        headers.append((b"content-type", draw(content_types).encode("utf-8", "replace")))
    if draw(st.booleans()) and headers:
        headers.append(draw(st.sampled_from(headers)))  # a repeated header
    body = draw(st.one_of(st.binary(max_size=200), st.just(b""), json_values.map(
        lambda v: json.dumps(v).encode()), nested_data().map(str.encode)))
    return Request(headers, body)


# -- structured and batch mode ----------------------------------------------------------

@st.composite
def event_objects(draw) -> dict:
    item: dict = {}
    for name, strategy in [("specversion", st.sampled_from(["1.0", "1.0", "0.3", 1.0])), ("id", texts),
                           ("source", st.one_of(st.just("/fuzz"), texts)), ("type", st.one_of(st.just("fuzz"), texts))]:
        if draw(st.integers(0, 9)):  # sometimes missing
            item[name] = draw(strategy)
    for name in draw(st.lists(names, max_size=6)):
        item[name] = draw(scalars)
    if draw(st.booleans()):
        item["time"] = draw(st.one_of(times, numbers))
    data = draw(st.sampled_from(["none", "json", "base64", "bad-base64", "both", "deep"]))
    if data == "json":
        item["data"] = draw(json_values)
    elif data == "base64":
        import base64
        item["data_base64"] = base64.b64encode(draw(st.binary(max_size=60))).decode()
    elif data == "bad-base64":
        item["data_base64"] = draw(st.one_of(texts, numbers))
    elif data == "both":
        item["data"], item["data_base64"] = 1, "AA=="
    elif data == "deep":
        item["data"] = json.loads(draw(st.integers(1, 400).map(deep)))
    if draw(st.booleans()):
        item["datacontenttype"] = draw(content_types)
    return item


def dump(value) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return b"null"


@st.composite
def structured_requests(draw) -> Request:
    body = dump(draw(event_objects()))
    if draw(st.integers(0, 9)) == 0:
        body = b'{"specversion":"1.0","id":"d","source":"/s","type":"t","data":' + deep(
            draw(st.integers(200, 3000))).encode() + b"}"
    headers = [(b"content-type", draw(st.sampled_from([STRUCTURED, STRUCTURED + "; charset=utf-8",
                                                        "Application/CloudEvents+JSON"])).encode())]
    if draw(st.booleans()):  # a stray ce-* header: the content type still decides
        headers.append((b"ce-id", b"stray"))
    return Request(headers, body, "structured")


@st.composite
def batch_requests(draw) -> Request:
    items = draw(st.lists(st.one_of(event_objects(), json_values), max_size=5))
    body = dump(items) if draw(st.integers(0, 9)) else dump(draw(json_values))
    return Request([(b"content-type", BATCH.encode())], body, "batch")


# -- mutation ---------------------------------------------------------------------------

VALID = [
    Request([(b"ce-specversion", b"1.0"), (b"ce-id", b"m1"), (b"ce-source", b"/m"), (b"ce-type", b"t"),
             (b"content-type", b"application/json"), (b"ce-time", b"2026-01-01T00:00:00.5Z")], b'{"a": [1, 2.5]}'),
    Request([(b"content-type", STRUCTURED.encode())],
            b'{"specversion":"1.0","id":"m2","source":"/m","type":"t","time":"2016-12-31T23:59:60Z",'
            b'"n":7,"data":{"a":[1,{"b":null}]}}', "structured"),
    Request([(b"content-type", BATCH.encode())],
            b'[{"specversion":"1.0","id":"m3","source":"/m","type":"t","data_base64":"aGVsbG8="},'
            b'{"specversion":"1.0","id":"m4","source":"/m","type":"t"}]', "batch"),
]


@st.composite
def mutated_requests(draw) -> Request:
    base = draw(st.sampled_from(VALID))
    body, headers = bytearray(base.body), list(base.headers)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "drop-header", "repeat-header", "case"]))
        if action == "flip" and body:
            at = draw(st.integers(0, len(body) - 1))
            body[at] = draw(st.integers(0, 255))
        elif action == "cut" and body:
            del body[draw(st.integers(0, len(body) - 1)):]
        elif action == "insert":
            at = draw(st.integers(0, len(body)))
            body[at:at] = draw(st.sampled_from([b"\\ud800", b"[" * 300, b"99999999999999999999", b'"', b"\xff",
                                                b"1e999", b"NaN", b",", b"{}", b"\x00"]))
        elif action == "drop-header" and headers:
            headers.pop(draw(st.integers(0, len(headers) - 1)))
        elif action == "repeat-header" and headers:
            name, _ = draw(st.sampled_from(headers))
            headers.append((name, draw(header_safe)))
        elif action == "case" and headers:
            at = draw(st.integers(0, len(headers) - 1))
            headers[at] = (headers[at][0].upper(), headers[at][1])
    return Request(headers, bytes(body), base.mode)


any_request = st.one_of(binary_requests(), structured_requests(), batch_requests(), mutated_requests())


# -- the oracle -------------------------------------------------------------------------

def as_utf8(value: str) -> str:
    """A header value as the ingress reads a `ce-*` one: raw non-ASCII bytes as the UTF-8 a
    sender meant (`fmesh.bindings.http.utf8_attributes`; bytes that are not UTF-8 are a 400)."""
    return value if value.isascii() else value.encode("latin-1").decode("utf-8")


def check_answer(request: Request, status: int, answer: dict, stored: list[Event]) -> None:
    """Never a 5xx; a refusal is a 4xx with a message and stores nothing; a 202 stored
    exactly what was sent."""
    assert status < 500, f"{status} for {request}: {answer}"
    if status in REFUSALS:
        assert isinstance(answer.get("error"), str) and answer["error"], (status, answer)
        assert stored == [], "a refused request stored events"
        return
    assert status == 202, f"unexpected {status} for {request}: {answer}"
    ids = answer.get("ids", [answer.get("id")])
    assert [e.id for e in stored] == ids
    headers = request.header_map()
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in (STRUCTURED, BATCH):
        [event] = stored
        assert event.payload == (request.body or None), "payload not byte-exact"
        for name, value in headers.items():
            if name == "ce-datacontenttype" and "content-type" in headers:
                continue  # the binding maps datacontenttype to Content-Type, which wins
            if name.startswith("ce-") and name != "ce-fmeshsender":
                sent = unquote(as_utf8(value))
                kept = event.attributes[name[3:]]
                assert str(kept) == sent or (isinstance(kept, int) and int(sent) == kept), (name, sent, kept)
    for event in stored:
        check_round_trip(event)


def check_round_trip(event: Event) -> None:
    """What a sink or replica receives (binary mode) reads back as the very same event."""
    headers, body = write_binary(event)
    again = read_events({k.lower(): v for k, v in headers.items()}, body)
    assert len(again) == 1
    assert again[0].payload == event.payload
    expected = {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v
                for k, v in event.attributes.items()}
    got = {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in again[0].attributes.items()}
    assert got == {k: ("true" if v is True else "false" if v is False else v) for k, v in expected.items()}
