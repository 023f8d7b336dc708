"""No function or method outside tests/ is over 80 lines (issue 30's shape rule): a long body is
a role or a command that grew a second job; split it where the job changes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("sidstream", "streams", "trainer", "psrq", "encoders", "sidcore", "feature_repo", "deploy")
LIMIT = 80


def long_functions(root: Path, limit: int = LIMIT) -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > limit:
                        out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_no_function_is_over_80_lines() -> None:
    assert long_functions(REPO) == []


def test_the_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "streams").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "streams" / "long.py").write_text(f"def too_long():\n{body}\n")
    assert long_functions(tmp_path) == [f"streams/long.py:1 too_long ({LIMIT + 1} lines)"]
