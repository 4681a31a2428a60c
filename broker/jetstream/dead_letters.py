"""Dead letters on JetStream: a stream of their own, one subject per subscription.

A letter's id is its sequence in that stream: it only grows, and a purge or a replay
never gives it to another letter. Reading letters goes through a short-lived consumer
that acks nothing (one request per 256 letters, not one per letter).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from fmesh.broker.jetstream.claims import NOW, Pull
from fmesh.broker.jetstream.engine import FAILURES, Engine
from fmesh.broker.jetstream.records import decode_dead_letter, encode_dead_letter
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from fmesh.contracts import DeadLetter

PAGE = 256            # letters read per request
READER_IDLE = 30.0    # seconds after which the server forgets a reader a crashed process left


class DeadLetters:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.names = engine.names

    def outgoing(self, letter: DeadLetter, msg_id: str) -> tuple[str, bytes, str]:
        return self.names.dead_letter_subject(letter.subscription), encode_dead_letter(letter), msg_id

    async def read(self, subscription: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        """The letters (of one subscription), oldest first."""
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, mem_storage=True,
                                filter_subject=self.names.dead_letter_subject(subscription),
                                inactive_threshold=READER_IDLE, num_replicas=1)
        letters: list[DeadLetter] = []
        with self.engine.translated("cannot read dead letters"):
            reader = (await self.engine.js.add_consumer(self.names.dead_letters, config)).name
            try:
                while limit is None or len(letters) < limit:
                    want = PAGE if limit is None else min(PAGE, limit - len(letters))
                    page = await self._page(reader, want)
                    letters.extend(page)
                    if len(page) < want:
                        break
            finally:
                with contextlib.suppress(*FAILURES):
                    await self.engine.js.delete_consumer(self.names.dead_letters, reader)
        return letters

    async def _page(self, reader: str, batch: int) -> list[DeadLetter]:
        msgs = []
        pull = Pull(self.engine, reader, batch, NOW, msgs.append, lambda _: None, no_wait=True)
        await pull.start(self.names.dead_letters)
        await pull.done.wait()
        return [decode_dead_letter(m.data, m.metadata.sequence.stream,
                                   self.names.subscription_of_dead_letter(m.subject)) for m in msgs]

    async def get(self, ids: Sequence[int]) -> list[DeadLetter]:
        """The letters with these ids that exist, in the order asked."""
        with self.engine.translated("cannot read dead letters"):
            found = await asyncio.gather(*(self._get(int(i)) for i in dict.fromkeys(ids)))
        return [letter for letter in found if letter is not None]

    async def _get(self, sequence: int) -> DeadLetter | None:
        if sequence < 1:
            return None                      # no letter has it (and 0 would mean "the last")
        try:
            raw = await self.engine.js.get_msg(self.names.dead_letters, seq=sequence)
        except NotFoundError:
            return None
        return decode_dead_letter(raw.data or b"", raw.seq, self.names.subscription_of_dead_letter(raw.subject))

    async def delete(self, ids: Sequence[int]) -> None:
        with self.engine.translated("cannot delete dead letters"):
            await asyncio.gather(*(self._delete(int(i)) for i in ids))

    async def _delete(self, sequence: int) -> None:
        with contextlib.suppress(NotFoundError):
            await self.engine.js.delete_msg(self.names.dead_letters, sequence)

    async def purge(self, subscription: str | None, before: float | None) -> int:
        subject = self.names.dead_letter_subject(subscription)
        if before is None:
            return await self._purge({"filter": subject})
        letters = await self.read(subscription)
        old = [letter.id for letter in letters if letter.failed_at < before]
        if not old:
            return 0
        if old == [letter.id for letter in letters[:len(old)]]:
            # The usual case, the oldest ones: one purge below the first that stays (and
            # below any letter that came since we read).
            return await self._purge({"filter": subject, "seq": old[-1] + 1})
        await self.delete(old)
        return len(old)

    async def _purge(self, request: dict) -> int:
        with self.engine.translated("cannot purge dead letters"):
            answer = await self.engine.api(f"STREAM.PURGE.{self.names.dead_letters}", request)
        return int(answer.get("purged", 0))

    async def count(self) -> dict[str, int]:
        with self.engine.translated("cannot count dead letters"):
            info = await self.engine.js.stream_info(self.names.dead_letters,
                                                    subjects_filter=self.names.dead_letter_subject())
        return {self.names.subscription_of_dead_letter(s): n for s, n in (info.state.subjects or {}).items()}
