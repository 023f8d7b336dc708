"""The module graph, with imports inside functions counted (grimp builds it as import-linter
does): no file circle inside a package, except the ones listed here with the reason they stay."""

from __future__ import annotations

import grimp
import pytest

pytestmark = pytest.mark.unit

PACKAGES = ("sidstream", "streams", "trainer", "psrq", "encoders", "sidcore")
# Circles that remain, each with the reason it stays. None since issue 30: the last ones
# (psrq.kmeans <-> psrq.torch_kmeans, trainer.models.config <-> din / mcca) went once the results
# tables kept current on a behaviour digest (sidstream.results.digest) instead of re-running.
KNOWN: dict[tuple[str, str], str] = {}


def circles() -> set[tuple[str, str]]:
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    found = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.split(".")[0] == module.split(".")[0] and graph.find_shortest_chain(importer=imported, imported=module):
                found.add(tuple(sorted((module, imported))))
    return found


def test_no_circle_inside_a_package_but_the_known_ones() -> None:
    found = circles()
    assert found - set(KNOWN) == set(), "new import circle(s): put a factory in the package's __init__ or a registry module"
    assert set(KNOWN) - found == set(), "a known circle is gone: take it off KNOWN"


BELOW_THE_APP = ("streams", "trainer", "psrq", "encoders", "feature_repo")


def settings_fetches() -> list[str]:
    """Every use of the name `get_settings` in the packages below the app layer (file:line)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    found = []
    for package in BELOW_THE_APP:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
                if "get_settings" in names or (isinstance(node, ast.Name) and node.id == "get_settings") or (
                        isinstance(node, ast.Attribute) and node.attr == "get_settings"):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_settings_are_passed_in_below_the_app_layer() -> None:
    """streams/, trainer/, psrq/, encoders/ and feature_repo/ take settings as arguments: none of
    them fetches the app's settings (sidcore.config.get_settings)."""
    assert settings_fetches() == []
