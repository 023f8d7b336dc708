"""The one source of the feature views' schemas: the FeatureViews in feature_repo/.

The Feast writer's feature lists and the Arrow schemas of its offline Parquet log are derived
from the definitions `feast apply` registers (loaded once, the way `feast apply` imports them),
so a field added to a view reaches the writer, its log and its readers with no second list to
keep in step. tests/unit/streams/test_sid_schema.py holds the Avro schema of sids.assigned equal to the
track_sids view.

Column order of an offline row: the view's first join key, `event_time`, its other join keys,
then its fields in definition order (the order the Parquet log has always had)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from feast import Entity, FeatureView
from feast import types as ft
from feast.value_type import ValueType

from streams.sinks.store import DEFINITIONS_DIR, load_definitions

SID_VIEW = "track_sids"
HISTORY_VIEW = "user_history"

_PRIMITIVE: dict[object, pa.DataType] = {
    ft.Int64: pa.int64(), ft.Int32: pa.int32(), ft.String: pa.string(), ft.Float32: pa.float32(),
    ft.Float64: pa.float64(), ft.Bool: pa.bool_(), ft.Bytes: pa.binary(),
}
_KEY_TYPES = {ValueType.STRING: pa.string(), ValueType.INT64: pa.int64(), ValueType.INT32: pa.int32()}


@functools.cache
def _definitions(repo_dir: Path = DEFINITIONS_DIR) -> tuple[dict[str, FeatureView], dict[str, Entity]]:
    objects = load_definitions(repo_dir)
    views = {o.name: o for o in objects if isinstance(o, FeatureView)}
    entities = {o.name: o for o in objects if isinstance(o, Entity)}
    return views, entities


def feature_view(name: str) -> FeatureView:
    views, _ = _definitions()
    if name not in views:
        raise KeyError(f"no feature view {name!r} in {DEFINITIONS_DIR}; views: {sorted(views)}")
    return views[name]


def features(name: str) -> tuple[str, ...]:
    """The view's feature names, in definition order."""
    return tuple(f.name for f in feature_view(name).features)


def join_keys(name: str) -> tuple[str, ...]:
    _, entities = _definitions()
    return tuple(entities[e].join_key for e in feature_view(name).entities)


def arrow_type(dtype: object) -> pa.DataType:
    """The Arrow type of a Feast field type (primitives and arrays of them)."""
    if isinstance(dtype, ft.Array):
        return pa.list_(arrow_type(dtype.base_type))
    if dtype in _PRIMITIVE:
        return _PRIMITIVE[dtype]
    raise TypeError(f"no Arrow type for the Feast type {dtype!r}")


def arrow_schema(name: str) -> pa.Schema:
    """The offline row of a view: first join key, event_time (ms, UTC), other join keys, fields."""
    view = feature_view(name)
    _, entities = _definitions()
    keys = [(entities[e].join_key, _KEY_TYPES[entities[e].value_type]) for e in view.entities]
    fields = [(f.name, arrow_type(f.dtype)) for f in view.features]
    return pa.schema([keys[0], ("event_time", pa.timestamp("ms", tz="UTC")), *keys[1:], *fields])


@dataclass(frozen=True)
class ViewSpec:
    """What the writer and the reader need of a feature view, derived from its definition."""

    name: str
    join_keys: tuple[str, ...]
    features: tuple[str, ...]
    time_feature: str  # event time in ms, stored as a feature: the online stores' own may be coarser
    schema: pa.Schema  # of an offline row
    offline_key: tuple[str, ...]  # what makes an offline row the same row: join keys, time and tie features
    # between rows of equal event time, these decide (greater wins, in order): the source records' offsets
    tie_features: tuple[str, ...] = ()

    @property
    def order(self) -> tuple[str, ...]:
        """The features that order an entity's rows: a row replaces the stored one only if greater."""
        return (self.time_feature, *self.tie_features)


# the feature of each view that holds its rows' event time in ms (a naming rule, checked below), and
# the features that break ties between equal times (the log's order: the source records' offsets)
_TIME_FEATURES = {SID_VIEW: "sid_event_time_ms", HISTORY_VIEW: "history_event_time_ms"}
_TIE_FEATURES = {SID_VIEW: ("sid_text_offset", "sid_audio_offset"), HISTORY_VIEW: ()}


@functools.cache
def view_spec(name: str) -> ViewSpec:
    keys, feats = join_keys(name), features(name)
    time_feature = _TIME_FEATURES[name]
    ties = _TIE_FEATURES[name]
    for f in (time_feature, *ties):
        if f not in feats:
            raise ValueError(f"feature view {name} has no {f} feature (what orders its rows)")
    offline_key = (keys[0], time_feature, *keys[1:], *ties)
    return ViewSpec(name, keys, feats, time_feature, arrow_schema(name), offline_key, ties)
