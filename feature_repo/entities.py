"""Entities: what the features are keyed by."""

from feast import Entity, ValueType

track = Entity(
    name="track",
    join_keys=["track_id"],
    value_type=ValueType.STRING,
    description="A music track in the catalog.",
)

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A listener whose positive interactions form a history.",
)
