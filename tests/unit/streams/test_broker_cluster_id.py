"""The KRaft cluster id that `LocalBroker.start` formats the storage with. A CI run once failed
because a random id began with '-' (one in 64 do) and kafka-storage read it as an option."""

from __future__ import annotations

import base64
import uuid

from streams.admin.broker import _kraft_cluster_id


def _uuid_with_leading(first_byte: int) -> uuid.UUID:
    return uuid.UUID(bytes=bytes([first_byte]) + bytes(15))


def test_cluster_id_never_starts_with_a_dash():
    """A UUID whose base64url starts with '-' (first six bits 62) is drawn again."""
    dashed = _uuid_with_leading(62 << 2)
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    plain = _uuid_with_leading(0x10)
    draws = iter([dashed, dashed, plain])
    cluster_id = _kraft_cluster_id(new_uuid=lambda: next(draws))
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cluster_id) == 22 and not cluster_id.startswith("-")


def test_cluster_ids_are_random_base64url():
    ids = {_kraft_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert all(len(i) == 22 and set(i) <= alphabet and not i.startswith("-") for i in ids)
