"""Recent positive interactions per user: pushed by the interaction logger."""

from datetime import timedelta

from entities import user
from feast import FeatureView, Field, FileSource, PushSource
from feast.types import Array, Int64, String

user_history_file = FileSource(
    name="user_history_file",
    path="data/offline/user_history",
    timestamp_field="event_time",
    description="Append-only Parquet log of every user-history row the logger flushed.",
)

user_history_push = PushSource(name="user_history_push", batch_source=user_history_file)

user_history = FeatureView(
    name="user_history",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(
            name="history_item_ids",
            dtype=Array(String),
            description="last 20 positive track ids, oldest first",
        ),
        Field(name="history_len", dtype=Int64),
        Field(
            name="history_event_time_ms", dtype=Int64, description="time of the newest interaction, epoch ms"
        ),
    ],
    source=user_history_push,
    online=True,
    description="A user's recent positive listening history, in time order.",
)
