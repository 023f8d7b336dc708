"""The pipeline's topology as data: every topic, and every role's input topics, record schema,
output topics, state, sink and dead-letter topics.

`streams.app.build_app` composes the roles asked for from ROLE_TABLE, `sidstream topics create`
(`streams.admin.topics`) creates TOPIC_TABLE, and docs/architecture.md's role table is
`roles_markdown()` (a test holds the two equal). Names here are base names; `TopicNames` puts a
prefix in front of them.
"""

from __future__ import annotations

from dataclasses import dataclass

TRACKS_METADATA = "tracks.metadata"
TRACKS_AUDIO = "tracks.audio"
EMBEDDINGS_TEXT = "embeddings.text"
EMBEDDINGS_AUDIO = "embeddings.audio"
SIDS_ASSIGNED = "sids.assigned"
INTERACTIONS = "interactions"
CODEBOOKS_CONTROL = "codebooks.control"
EMBEDDINGS_KEPT = "embeddings.kept"  # compacted: each track's latest embedding per modality
SIDS_IDENTITY = "sids.identity"  # compacted: identity-code claims, partitioned by semantic bucket (streams.identity)


def dlq(topic: str) -> str:
    """The dead-letter twin of a data topic."""
    return f"{topic}.dlq"


@dataclass(frozen=True)
class TopicSpec:
    """One pipeline topic: `data` topics carry records a role consumes and have a .dlq twin."""

    name: str
    schema: str  # the Avro record its values are (streams/schemas/<schema>.avsc)
    data: bool = True
    compacted: bool = False
    single_partition: bool = False  # one ordered log (the control topic)


TOPIC_TABLE: tuple[TopicSpec, ...] = (
    TopicSpec(TRACKS_METADATA, "TrackMetadata"),
    TopicSpec(TRACKS_AUDIO, "TrackAudio"),
    TopicSpec(EMBEDDINGS_TEXT, "Embedding"),
    TopicSpec(EMBEDDINGS_AUDIO, "Embedding"),
    TopicSpec(SIDS_ASSIGNED, "SidAssigned"),
    TopicSpec(INTERACTIONS, "Interaction"),
    TopicSpec(CODEBOOKS_CONTROL, "CodebookControl", data=False, single_partition=True),
    TopicSpec(EMBEDDINGS_KEPT, "Embedding", data=False, compacted=True),
    TopicSpec(SIDS_IDENTITY, "IdentityClaim", data=False, compacted=True),
)
DATA_TOPICS: tuple[str, ...] = tuple(t.name for t in TOPIC_TABLE if t.data)


@dataclass(frozen=True)
class Role:
    """One streaming role: a Faust agent over `inputs`, whose batch function lives in `module`.

    `emits` is the topic its batch results' outputs go to, `keeps` the topic of its kept records
    (the assigner's join state); every input's dead letters go to dlq(input)."""

    name: str
    agent: str
    module: str
    inputs: tuple[str, ...]
    schema: str
    emits: str | None
    keeps: str | None
    state: str
    sink: str

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(t for t in (self.emits, self.keeps) if t is not None)

    @property
    def dead_letters(self) -> tuple[str, ...]:
        return tuple(dlq(t) for t in self.inputs)


ROLE_TABLE: tuple[Role, ...] = (
    Role("text", "text-encoder", "streams.roles.text", (TRACKS_METADATA,), "TrackMetadata",
         EMBEDDINGS_TEXT, None, "-", "-"),
    Role("audio", "audio-encoder", "streams.roles.audio", (TRACKS_AUDIO,), "TrackAudio",
         EMBEDDINGS_AUDIO, None, "-", "-"),
    Role("assigner", "psrq-assigner", "streams.roles.assigner", (EMBEDDINGS_TEXT, EMBEDDINGS_AUDIO), "Embedding",
         SIDS_ASSIGNED, EMBEDDINGS_KEPT, "kept embeddings (embeddings.kept); identity claims (sids.identity)", "-"),
    Role("writer", "feast-writer", "streams.roles.writer", (SIDS_ASSIGNED,), "SidAssigned",
         None, None, "-", "Feast track_sids (online + offline log)"),
    Role("logger", "interaction-logger", "streams.roles.logger", (INTERACTIONS,), "Interaction",
         None, None, "user history (Faust table, changelog topic)", "interaction log (Parquet); Feast user_history"),
)
ROLES: tuple[str, ...] = tuple(r.name for r in ROLE_TABLE)


def role(name: str) -> Role:
    for r in ROLE_TABLE:
        if r.name == name:
            return r
    raise KeyError(f"unknown role {name!r}; choose from {', '.join(ROLES)}")


def topic_spec(name: str) -> TopicSpec:
    for t in TOPIC_TABLE:
        if t.name == name:
            return t
    raise KeyError(f"unknown topic {name!r}")


def roles_markdown() -> str:
    """The role table as docs/architecture.md shows it."""
    head = "| role | input topics | record | output topics | state | sink | dead letters |\n|---|---|---|---|---|---|---|\n"
    rows = []
    for r in ROLE_TABLE:
        outputs = ", ".join(f"`{t}`" for t in r.outputs) or "-"
        rows.append(f"| `{r.name}` | {', '.join(f'`{t}`' for t in r.inputs)} | `{r.schema}` | {outputs} | {r.state} "
                    f"| {r.sink} | {', '.join(f'`{t}`' for t in r.dead_letters)} |")
    return head + "\n".join(rows) + "\n"
