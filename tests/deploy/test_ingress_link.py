"""The ingress link's frames carry a forwarded request and its answer exactly (None and
b"" told apart), and the mesh's end takes connections only from its own workers."""

from __future__ import annotations

import asyncio
import os

import pytest
from fmesh.broker.ingress import Ingress
from fmesh.broker.ingress_http import Answer, Forwarded
from fmesh.deploy.ingress_link import (
    IngressLink,
    LinkClient,
    decode_answer,
    decode_forwarded,
    encode_answer,
    encode_forwarded,
)
from fmesh.runtime.wire import decode

from fmesh.events import Event

CASES = [
    Forwarded({"ce-id": "1"}, None, None, [Event({"id": "1", "type": "t"}, b"payload")]),
    Forwarded({"x-fmesh-peer": "eu"}, {"peercert": {"subject": [[["commonName", "eu"]]]}}, b"",
              [Event({"id": "2"}, None), Event({"id": "3"}, b""), Event({"id": "4"}, b"\x00\xff")]),
    Forwarded({}, None, b"signed body", [], Answer(400, [(b"content-type", b"application/json")], b'{"error": 1}')),
    Forwarded({}, None, None, [], Answer(415, [], b"")),
]


@pytest.mark.parametrize("request_", CASES)
def test_a_forwarded_request_comes_out_as_it_went_in(request_):
    back = decode_forwarded(decode(encode_forwarded(7, request_)[4:]))
    assert back == request_


def test_an_answer_comes_out_as_it_went_in():
    answer = Answer(202, [(b"content-type", b"application/json"), (b"x-\xe9", b"\xff")], b'{"id":"1"}')
    assert decode_answer(decode(encode_answer(3, answer)[4:])) == answer


def test_the_link_answers_its_workers_and_refuses_other_processes(tmp_path):
    async def scenario(allowed: bool) -> Answer | None:
        async def publish(events):
            return None

        link = IngressLink(Ingress(publish), lambda pid: allowed and pid == os.getpid())
        await link.start(tmp_path / f"link-{allowed}.sock")
        lost = asyncio.Event()
        client = LinkClient(tmp_path / f"link-{allowed}.sock", on_lost=lost.set)
        await client.connect()
        try:
            return await asyncio.wait_for(client.hand_on(CASES[0]), 10)
        except ConnectionError:
            await asyncio.wait_for(lost.wait(), 10)
            return None
        finally:
            await client.close()
            await link.close()

    answer = asyncio.run(scenario(True))
    assert answer is not None and answer.status == 202 and answer.body == b'{"id":"1"}'
    assert asyncio.run(scenario(False)) is None  # closed at once: no answer, the worker told it is lost
