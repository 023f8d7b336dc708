"""Results anyone can regenerate: `sidstream results regenerate | check | list`.

Every table in ``docs/results/`` lives in a *generated block* of its Markdown file::

    <!-- results:begin NAME -->
    <!-- results:meta {"table": NAME, "code_fingerprint": ..., "verdicts": {...}, ...} -->
    ... generated tables ...
    <!-- results:end NAME -->

A block is written only by ``sidstream results regenerate`` (``sidstream.results.specs`` lists
what produces each one); everything outside the blocks is hand-written reading and is never
touched. A sentence of the reading that states a comparison carries a claim marker,
``<!-- claim NAME:VERDICT_ID = better -->``, naming a verdict the generator computed (paired
test over seeds, ``sidstream.results.stats``); ``sidstream results check`` fails when a
regenerated verdict no longer says what the reading claims.

Staleness: each block records a fingerprint of the source files and settings it depends on
(content hashes, not commit history, so shallow clones and unrelated edits do not trip it) and
of its data. ``sidstream results check`` recomputes them and names the stale tables; tables
measured on a particular machine (speed, reliability drills) record the machine and are exempt
from the code check.

A source change that keeps every number need not cost a re-run: ``docs/results/behaviour.json``
holds each table's *behaviour digest* (``sidstream.results.digest``: outputs of small
deterministic probes of the code that made the block). When a table's code fingerprint changed,
the check runs the probes on the code now; equal outputs (floats within a tolerance) and unchanged
rendering sources keep the table current, and the check says so.
"""
