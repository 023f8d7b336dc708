"""Generated blocks and claim markers in the Markdown files of docs/results (format: package doc)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_BLOCK = re.compile(
    r"<!-- results:begin (?P<name>[\w.-]+) -->\n(?P<body>.*?)<!-- results:end (?P=name) -->", re.DOTALL
)
_META = re.compile(r"<!-- results:meta (?P<json>\{.*?\}) -->")
_CLAIM = re.compile(r"<!-- claim (?P<table>[\w.-]+):(?P<verdict>[\w.+@=,-]+) = (?P<value>[\w.+-]+) -->")


class BlockError(ValueError):
    """A results file that cannot be read or updated as the format says."""


@dataclass(frozen=True)
class Block:
    name: str
    meta: dict[str, Any]
    body: str


@dataclass(frozen=True)
class Claim:
    table: str
    verdict: str
    value: str
    line: int


def read_blocks(text: str) -> dict[str, Block]:
    out = {}
    for m in _BLOCK.finditer(text):
        meta = _META.search(m["body"])
        if meta is None:
            raise BlockError(f"block {m['name']!r} has no results:meta line")
        out[m["name"]] = Block(m["name"], json.loads(meta["json"]), m["body"])
    return out


def read_claims(text: str) -> list[Claim]:
    """Claim markers outside the generated blocks (the hand-written reading)."""
    outside = _BLOCK.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return [Claim(m["table"], m["verdict"], m["value"], outside.count("\n", 0, m.start()) + 1)
            for m in _CLAIM.finditer(outside)]


def render_block(name: str, meta: dict[str, Any], markdown: str) -> str:
    return (f"<!-- results:begin {name} -->\n<!-- results:meta {json.dumps(meta, sort_keys=True)} -->\n"
            f"{markdown.rstrip()}\n<!-- results:end {name} -->")


def write_block(path: Path, name: str, meta: dict[str, Any], markdown: str, title: str) -> None:
    """Replace block `name` in `path`, or append it (the file is created with `title` if absent)."""
    block = render_block(name, meta, markdown)
    text = path.read_text(encoding="utf-8") if path.is_file() else f"# {title}\n"
    matches = [m for m in _BLOCK.finditer(text) if m["name"] == name]
    if len(matches) > 1:
        raise BlockError(f"{path}: block {name!r} appears {len(matches)} times")
    if matches:
        m = matches[0]
        text = text[: m.start()] + block + text[m.end():]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
