"""Entities: what the features are keyed by."""

from feast import Entity, ValueType

track = Entity(
    name="track",
    join_keys=["track_id"],
    value_type=ValueType.STRING,
    description="A music track in the catalog.",
)

codebook = Entity(
    name="codebook",
    join_keys=["codebook_version"],
    value_type=ValueType.STRING,
    description="A codebook version: SID rows are keyed by track and version; readers ask for the live one.",
)

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A listener whose positive interactions form a history.",
)
