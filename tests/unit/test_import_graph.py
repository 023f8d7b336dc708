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
