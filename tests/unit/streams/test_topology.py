"""The topology table is the one source: topics create, build_app and the docs derive from it."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from streams.admin.topics import TopicNames
from streams.runtime import RoleHandler
from streams.topology import DATA_TOPICS, ROLE_TABLE, ROLES, TOPIC_TABLE, dlq, role, roles_markdown

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]


def test_docs_role_table_is_the_generated_one() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    begin = text.index("<!-- roles:begin")
    body = text[text.index("\n", begin) + 1 : text.index("<!-- roles:end -->")]
    assert body == roles_markdown(), "docs/architecture.md's role table is stale: paste streams.topology.roles_markdown()"


def test_every_topic_a_role_names_is_created_with_its_dead_letter_twin() -> None:
    created = set(TopicNames("p.").all())
    for r in ROLE_TABLE:
        for t in (*r.inputs, *r.outputs):
            assert f"p.{t}" in created, (r.name, t)
        for t in r.dead_letters:
            assert f"p.{t}" in created, (r.name, t)
    assert {f"p.{dlq(t)}" for t in DATA_TOPICS} <= created
    assert len(created) == len(TOPIC_TABLE) + len(DATA_TOPICS)


def test_every_schema_named_exists() -> None:
    schemas = ROOT / "streams" / "schemas"
    names = {p.read_text().split('"name"')[1].split('"')[1] for p in schemas.glob("*.avsc")}
    for t in TOPIC_TABLE:
        assert t.schema in names, t
    for r in ROLE_TABLE:
        assert r.schema == next(t.schema for t in TOPIC_TABLE if t.name == r.inputs[0])


@pytest.mark.parametrize("name", ROLES)
def test_each_role_module_holds_its_handler(name: str) -> None:
    r = role(name)
    module = importlib.import_module(r.module)
    handlers = [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                if issubclass(obj, RoleHandler) and obj is not RoleHandler and obj.__module__ == module.__name__]
    assert len(handlers) == 1 and handlers[0].role == name


def test_unknown_role_is_named() -> None:
    with pytest.raises(KeyError, match="unknown role 'tagger'"):
        role("tagger")
