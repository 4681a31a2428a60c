"""What every stream, consumer, bucket and subject of one mesh is called on JetStream.

Everything is derived from the mesh (cluster) name, so several meshes can share one
JetStream account without meeting. Subscription names (`function:resize`) become one
subject token and one consumer name each: every character outside `[A-Za-z0-9-]` is
written `_XX` (its UTF-8 bytes in hex), which is reversible and valid in both places.

Deliveries of subscription S sit on `fmesh.<mesh>.d.<S>.u` (events without a
`partitionkey`) or `fmesh.<mesh>.d.<S>.k<n>` (with one: n is the key's hash bucket), so an
ordered subscription can take each bucket one at a time (see `claims.py`).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

MESH_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_PLAIN = re.compile(rb"[A-Za-z0-9-]")
UNKEYED = "u"


def token(name: str) -> str:
    """`name` as one subject token and consumer name (reversible, see `untoken`)."""
    return "".join(chr(b) if _PLAIN.fullmatch(bytes([b])) else f"_{b:02X}" for b in name.encode())


def untoken(text: str) -> str:
    """The name `token` made `text` from."""
    raw, i = bytearray(), 0
    while i < len(text):
        if text[i] == "_":
            raw.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            raw.append(ord(text[i]))
            i += 1
    return raw.decode()


def bucket_of(key: str, buckets: int) -> int:
    """The hash bucket of a partition key (stable across processes and versions: crc32)."""
    return zlib.crc32(key.encode()) % buckets


@dataclass(frozen=True)
class Names:
    """The names of one mesh's JetStream resources."""

    mesh: str

    def __post_init__(self) -> None:
        if not MESH_NAME.fullmatch(self.mesh):
            raise ValueError(f"mesh (cluster) name {self.mesh!r}: use 1 to 32 letters, digits, - or _")

    @property
    def deliveries(self) -> str:
        return f"fmesh-{self.mesh}-deliveries"

    @property
    def dead_letters(self) -> str:
        return f"fmesh-{self.mesh}-dead"

    @property
    def state(self) -> str:
        return f"fmesh-{self.mesh}-state"

    @property
    def attempts(self) -> str:
        return f"fmesh-{self.mesh}-attempts"

    @property
    def seen(self) -> str:
        return f"fmesh-{self.mesh}-seen"

    @property
    def blobs(self) -> str:
        return f"fmesh-{self.mesh}-blobs"

    def all_streams(self) -> list[str]:
        """Every stream of the mesh, KV buckets and the object store included (as JetStream names them)."""
        return [self.deliveries, self.dead_letters, f"KV_{self.state}", f"KV_{self.attempts}", f"KV_{self.seen}",
                f"OBJ_{self.blobs}"]

    # -- subjects --------------------------------------------------------------------------

    @property
    def delivery_subjects(self) -> str:
        return f"fmesh.{self.mesh}.d.>"

    @property
    def dead_letter_subjects(self) -> str:
        return f"fmesh.{self.mesh}.dead.>"

    def delivery_subject(self, subscription: str, part: str = ">") -> str:
        """Where deliveries of `subscription` go: part `u`, `k<n>`, or `>` for all of them."""
        return f"fmesh.{self.mesh}.d.{token(subscription)}.{part}"

    def dead_letter_subject(self, subscription: str | None = None) -> str:
        return f"fmesh.{self.mesh}.dead.{'>' if subscription is None else token(subscription)}"

    def subscription_of_dead_letter(self, subject: str) -> str:
        return untoken(subject.rsplit(".", 1)[1])

    # -- consumers -------------------------------------------------------------------------

    def consumer(self, subscription: str, part: str | None = None) -> str:
        """The durable consumer of a subscription (`part` None: all of it, unordered)."""
        return f"all-{token(subscription)}" if part is None else f"{part}-{token(subscription)}"
