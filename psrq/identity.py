"""Unique semantic IDs: PSRQ's semantic layers plus identity codes (method ``psrq_id``).

    ID = (c_1 .. c_L | i_1 .. i_m)          codes[:, :L] are always the semantic layers

- ``c_1..c_L`` are PSRQ's codes, unchanged: the same fit, so the same per-layer purity.
- ``i_1..i_m`` are identity codes: an RQ continuation on PSRQ's plain residual
  ``r = x - x̂_PSRQ`` (m layers of K_id centroids, k-means on the residuals). Each item takes
  the **nearest free composite code** (i_1..i_m) of its *bucket*, the items sharing its
  semantic prefix c_1..c_L. Within a bucket no two items hold the same composite code, so
  the full ID is unique; and because decode adds the identity centroids, the identity part
  carries information (it reconstructs the residual), unlike TIGER's counter.

Capacity per bucket is K_id^m (m = 1 or 2: the composite search is exhaustive, K_id^m
distances per item). Unless set, K_id is chosen at fit time: the semantic K, or more when
the largest bucket of the fit data times HEADROOM needs more. A full bucket is an error
(`BucketFull`: the track is dead-lettered with the reason), never a silent collision.

The assignment is *sequential greedy in a given order* (each item takes its nearest code that
no earlier item of its bucket holds), which makes it a pure function of the ordered input:
the stream (streams.identity) replays claims in log order into the same `IdentityTable`
and reaches the same IDs on every assigner. `IdentityPSRQ.encode(X)` assigns the rows of X
in input order against a fresh table: unique within X.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from psrq.base import (
    F32,
    I64,
    SEARCH_BLOCK,
    Quantizer,
    check_codes,
    check_encode_input,
    check_fit_input,
    nearest,
)
from psrq.clustering import kmeans
from psrq.kmeans_common import DEFAULT_MAX_POINTS_PER_CENTROID, DEFAULT_NITER, subsample
from psrq.progressive import PSRQ

MAX_IDENTITY_LAYERS = 2
HEADROOM = 4  # default identity capacity per bucket: this many times the largest bucket at fit time


class BucketFull(RuntimeError):
    """Every composite identity code of a bucket is taken."""


def bucket_full(bucket: Hashable, capacity: int) -> BucketFull:
    """The error of a bucket whose every composite identity code is taken."""
    return BucketFull(f"identity bucket {bucket} is full ({capacity} codes taken); refit with a larger identity codebook")


def nearest_free_code(row: F32, taken: np.ndarray | None, reserved: Sequence[int] = ()) -> int | None:
    """argmin of `row` [capacity] over the codes neither `taken` (bool mask) nor `reserved`;
    None when every code is. The one masking rule of the tables and queries below."""
    if taken is None and not reserved:
        return int(np.argmin(row))
    masked = row.copy() if taken is None else np.where(taken, np.inf, row)
    if reserved:
        masked[np.asarray(list(reserved), dtype=np.int64)] = np.inf
    code = int(np.argmin(masked))
    return code if np.isfinite(masked[code]) else None


def bucket_keys(semantic: I64) -> list[tuple[int, ...]]:
    """One hashable key per row: its semantic prefix."""
    return [tuple(row) for row in np.asarray(semantic, dtype=np.int64).tolist()]


class IdentityTable:
    """Taken identity codes per bucket, applied in one total order (first claim wins).

    ``claim`` is the only mutation: a claim on a free code makes the item its owner; a claim
    on a taken code loses. An item's code in a bucket is its first winning claim there; codes
    are never freed (a retired ID is never handed to another item).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"identity capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._owner: dict[Hashable, dict[int, str]] = {}
        self._held: dict[Hashable, dict[str, int]] = {}
        self._taken: dict[Hashable, np.ndarray] = {}

    def claim(self, bucket: Hashable, item: str, code: int) -> bool:
        """Apply one claim; True when `item` owns `code` afterwards."""
        code = int(code)
        if not 0 <= code < self.capacity:
            raise ValueError(f"identity code {code} out of range 0..{self.capacity - 1}")
        owners = self._owner.setdefault(bucket, {})
        holder = owners.get(code)
        if holder is None:
            owners[code] = item
            taken = self._taken.get(bucket)
            if taken is None:
                taken = self._taken[bucket] = np.zeros(self.capacity, dtype=bool)
            taken[code] = True
            self._held.setdefault(bucket, {}).setdefault(item, code)
            return True
        return holder == item

    def held(self, bucket: Hashable, item: str) -> int | None:
        """The item's code in the bucket (its first winning claim), or None."""
        return self._held.get(bucket, {}).get(item)

    def owner(self, bucket: Hashable, code: int) -> str | None:
        return self._owner.get(bucket, {}).get(int(code))

    def nearest_free(self, bucket: Hashable, distances: F32, reserved: Sequence[int] = ()) -> int:
        """argmin of `distances` [capacity] over the bucket's free codes (minus `reserved`)."""
        code = nearest_free_code(distances, self._taken.get(bucket), reserved)
        if code is None:
            raise bucket_full(bucket, self.capacity)
        return code

    def taken_mask(self, bucket: Hashable) -> np.ndarray | None:
        """bool [capacity]: the bucket's taken codes (None: none taken yet)."""
        return self._taken.get(bucket)

    def bucket_size(self, bucket: Hashable) -> int:
        return len(self._owner.get(bucket, {}))

    def largest_bucket(self) -> int:
        return max((len(v) for v in self._owner.values()), default=0)

    def __len__(self) -> int:
        return sum(len(v) for v in self._owner.values())


class DenseQuery:
    """The nearest free code from a full distance matrix [n, capacity] (`IdentityPSRQ.identity_distances`)."""

    def __init__(self, distances: F32) -> None:
        self.distances = distances

    def __len__(self) -> int:
        return len(self.distances)

    def nearest_free(self, i: int, taken: np.ndarray | None, reserved: Sequence[int] = ()) -> int | None:
        """Item i's nearest code that is neither taken nor reserved; None when there is none."""
        return nearest_free_code(self.distances[i], taken, reserved)


class CompositeQuery:
    """The nearest free composite identity code (i_1 * K_2 + i_2) of each item **without** the
    [n, K_id^2] distance matrix: the same values, visited best-first.

    d(i_1, i_2) = dA[i_1] + part[i_2] + G[i_1, i_2] (float32, the very expressions and order of
    `identity_distances`, so every value is bit-equal to its entry there). A row i_1 cannot hold
    anything below lb[i_1] = (dA[i_1] + min(part)) + min(G[i_1]) (float rounding is monotonic, so
    the bound holds in float32 too); rows are visited in order of lb and the search stops at the
    first row whose bound exceeds the best free value found. Ties go to the lowest composite code,
    as `np.argmin` over the full row does: the result is exactly `DenseQuery`'s. Time and memory
    per item: O(K_1 + K_2) plus K_2 per visited row (usually a few), not O(K_1 K_2)."""

    def __init__(self, dA: F32, part: F32 | None, G: F32 | None) -> None:
        self.dA, self.part, self.G = dA, part, G
        self.K2 = 1 if part is None else part.shape[1]
        self.gmin = None if G is None else G.min(axis=1)
        self.rows_visited = 0

    def __len__(self) -> int:
        return len(self.dA)

    def nearest_free(self, i: int, taken: np.ndarray | None, reserved: Sequence[int] = ()) -> int | None:
        dA = self.dA[i]
        if self.part is None:  # one identity layer: the row is the whole search
            return nearest_free_code(dA, taken, reserved)
        reserved_set = {int(r) for r in reserved}
        part, G, K2 = self.part[i], self.G, self.K2
        assert G is not None and self.gmin is not None
        lb = (dA + part.min()) + self.gmin
        best, best_code = np.float32(np.inf), -1
        for i1 in np.argsort(lb, kind="stable"):
            if lb[i1] > best:
                break
            self.rows_visited += 1
            row = (dA[i1] + part) + G[i1]
            lo = int(i1) * K2
            if taken is not None:
                row = np.where(taken[lo : lo + K2], np.inf, row)
            for r in reserved_set:
                if lo <= r < lo + K2:
                    row[r - lo] = np.inf
            j = int(np.argmin(row))
            if row[j] < best or (row[j] == best and lo + j < best_code):
                best, best_code = row[j], lo + j
        return best_code if np.isfinite(best) else None


def as_query(distances: Any) -> DenseQuery | CompositeQuery:
    """A query from a dense distance matrix (or a query already)."""
    return distances if isinstance(distances, DenseQuery | CompositeQuery) else DenseQuery(np.asarray(distances))


def assign_in_order(
    table: IdentityTable, buckets: Sequence[Hashable], items: Sequence[str], distances: F32 | DenseQuery | CompositeQuery,
    hints: Sequence[int | None] | None = None,
) -> I64:
    """Sequential greedy: item i keeps the code it holds in its bucket, else takes its hint if
    free, else its nearest free code. `distances`: [n, capacity] or a query (CompositeQuery).
    Mutates `table`; returns the codes int64 [n]."""
    query = as_query(distances)
    out = np.empty(len(items), dtype=np.int64)
    for i, (bucket, item) in enumerate(zip(buckets, items, strict=True)):
        code = table.held(bucket, item)
        if code is None:
            hint = None if hints is None else hints[i]
            if hint is not None and table.owner(bucket, hint) is None:
                code = int(hint)
            else:
                found = query.nearest_free(i, table.taken_mask(bucket))
                if found is None:
                    raise bucket_full(bucket, table.capacity)
                code = found
            table.claim(bucket, item, code)
        out[i] = code
    return out


def counter_suffix(semantic: I64) -> I64:
    """TIGER's counter (arXiv 2305.05065): 0, 1, ... over the items sharing a semantic ID, in input order."""
    semantic = np.asarray(semantic, dtype=np.int64)
    if semantic.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    _, inverse = np.unique(semantic, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    sorted_groups = inverse[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    out = np.empty(len(order), dtype=np.int64)
    out[order] = rank
    return out


class IdentityPSRQ(Quantizer):
    """PSRQ semantic layers + m identity layers; codes are [n, L + m]."""

    method = "psrq_id"

    def __init__(
        self,
        codebook_sizes: Any,
        seed: int = 0,
        alpha: float = 1.0,
        prefix_scale: str = "none",
        niter: int = DEFAULT_NITER,
        max_points_per_centroid: int = DEFAULT_MAX_POINTS_PER_CENTROID,
        prefix_weights: list[float] | None = None,
        anchor: str = "prefix",
        identity_layers: int = 2,
        identity_size: int | None = None,
        fit_largest_bucket: int | None = None,
        device: str = "cpu",
        kmeans_backend: str = "auto",
    ) -> None:
        sizes = [int(k) for k in codebook_sizes]
        if not 1 <= identity_layers <= MAX_IDENTITY_LAYERS:
            raise ValueError(f"identity_layers must be 1..{MAX_IDENTITY_LAYERS}, got {identity_layers}")
        if identity_size is not None and identity_size < 2:
            raise ValueError(f"identity_size must be >= 2, got {identity_size}")
        # `sizes` are the semantic layers' K (from_state strips the identity layers)
        self.requested_identity_size = identity_size  # None: chosen at fit from the largest bucket
        self.identity_size = int(identity_size or max(sizes))
        super().__init__(sizes + [self.identity_size] * identity_layers, seed)
        self.semantic = PSRQ(
            sizes, seed, alpha, prefix_scale, niter, max_points_per_centroid, prefix_weights, anchor,
            device=device, kmeans_backend=kmeans_backend,
        )
        self.device, self.kmeans_backend = device, kmeans_backend  # where the fit runs; not in options()
        self.identity_layers = int(identity_layers)
        self.fit_largest_bucket = fit_largest_bucket
        self.id_centroids: list[F32] = []

    @property
    def semantic_layers(self) -> int:
        return len(self.semantic.codebook_sizes)

    @property
    def capacity(self) -> int:
        return int(self.identity_size**self.identity_layers)

    # -- fit ----------------------------------------------------------------------------------
    def fit(self, X: Any) -> IdentityPSRQ:
        X = check_fit_input(X, self.semantic.codebook_sizes)
        self.semantic.fit(X)
        sem = self.semantic.encode(X)
        _, counts = np.unique(sem, axis=0, return_counts=True)
        self.fit_largest_bucket = int(counts.max())
        if self.requested_identity_size is None:
            # K_id^m >= HEADROOM x the largest bucket (room for the stream's new tracks), at least
            # the semantic K, at most the fit rows (k-means needs a point per centroid)
            need = int(np.ceil((HEADROOM * self.fit_largest_bucket) ** (1.0 / self.identity_layers) - 1e-9))
            self.identity_size = int(min(len(X), max(max(self.semantic.codebook_sizes), need)))
            self.codebook_sizes = (*self.semantic.codebook_sizes, *([self.identity_size] * self.identity_layers))
        R = X - self.semantic.decode(sem)
        rows = subsample(len(R), self.identity_size, self.seed + 100, self.semantic.max_points_per_centroid)
        R_fit = R if rows is None else R[rows]
        self.id_centroids = []
        for j in range(self.identity_layers):
            C = kmeans(
                np.ascontiguousarray(R_fit), self.identity_size, self.seed + self.semantic_layers + j,
                self.semantic.niter, self.device, self.kmeans_backend,
            )
            self.id_centroids.append(np.ascontiguousarray(C, dtype=np.float32))
            R_fit = R_fit - C[nearest(np.ascontiguousarray(R_fit), C)]
        self._dim = X.shape[1]
        if self.fit_largest_bucket > self.capacity:
            raise ValueError(
                f"the largest semantic bucket on the fit data has {self.fit_largest_bucket} items, more than the "
                f"{self.capacity} identity codes of a bucket (identity_size={self.identity_size}, identity_layers="
                f"{self.identity_layers}); raise identity_size"
            )
        return self

    # -- encode -------------------------------------------------------------------------------
    def semantic_encode(self, X: Any) -> I64:
        """The semantic layers c_1..c_L alone (PSRQ's codes)."""
        return self.semantic.encode(X)

    def identity_distances(self, X: F32, semantic: I64) -> F32:
        """[n, K_id^m] squared distance from each row's PSRQ residual to every composite identity code
        (composite index i_1 * K_id + i_2 for m = 2)."""
        R = np.ascontiguousarray(X - self.semantic.decode(semantic), dtype=np.float32)
        A = self.id_centroids[0]
        dA = np.einsum("ij,ij->i", R, R)[:, None] - 2.0 * (R @ A.T) + np.einsum("ij,ij->i", A, A)[None, :]
        if self.identity_layers == 1:
            return np.ascontiguousarray(dA, dtype=np.float32)
        B = self.id_centroids[1]
        G = 2.0 * (A @ B.T)  # [K1, K2]
        nB = np.einsum("ij,ij->i", B, B)
        part = nB[None, :] - 2.0 * (R @ B.T)  # [n, K2]
        out = dA[:, :, None] + part[:, None, :] + G[None, :, :]
        return np.ascontiguousarray(out.reshape(len(R), -1), dtype=np.float32)

    def identity_query(self, X: F32, semantic: I64) -> CompositeQuery:
        """What `identity_distances` gives, as a best-first search (CompositeQuery): per item
        O(K_id) time and memory instead of O(K_id^m); the same nearest free code."""
        R = np.ascontiguousarray(X - self.semantic.decode(semantic), dtype=np.float32)
        A = self.id_centroids[0]
        dA = np.einsum("ij,ij->i", R, R)[:, None] - 2.0 * (R @ A.T) + np.einsum("ij,ij->i", A, A)[None, :]
        if self.identity_layers == 1:
            return CompositeQuery(np.ascontiguousarray(dA, dtype=np.float32), None, None)
        B = self.id_centroids[1]
        G = 2.0 * (A @ B.T)  # [K1, K2]
        nB = np.einsum("ij,ij->i", B, B)
        part = nB[None, :] - 2.0 * (R @ B.T)  # [n, K2]
        return CompositeQuery(dA, part, G)

    def split(self, composite: I64) -> I64:
        """Composite identity index -> identity codes [n, m]."""
        composite = np.asarray(composite, dtype=np.int64)
        if self.identity_layers == 1:
            return composite[:, None]
        return np.stack([composite // self.identity_size, composite % self.identity_size], axis=1)

    def assign(self, X: Any, table: IdentityTable, items: Sequence[str], hints: Sequence[int | None] | None = None) -> I64:
        """Full IDs [n, L + m] of the rows of X for `items`, in order, against `table` (mutated)."""
        X = check_encode_input(X, self.dim)
        if len(items) != len(X):
            raise ValueError(f"{len(items)} item ids for {len(X)} rows")
        sem = self.semantic.encode(X)
        composite = np.empty(len(X), dtype=np.int64)
        keys = bucket_keys(sem)
        block = max(1, SEARCH_BLOCK // max(1, self.capacity // 64))
        for start in range(0, len(X), block):
            stop = min(len(X), start + block)
            D = self.identity_query(X[start:stop], sem[start:stop])
            composite[start:stop] = assign_in_order(
                table, keys[start:stop], items[start:stop], D, None if hints is None else hints[start:stop]
            )
        return np.concatenate([sem, self.split(composite)], axis=1)

    def encode(self, X: Any) -> I64:
        """Unique IDs for the rows of X assigned in input order against a fresh table."""
        X = check_encode_input(X, self.dim)
        return self.assign(X, IdentityTable(self.capacity), [str(i) for i in range(len(X))])

    # -- decode / state -----------------------------------------------------------------------
    def decode_prefix(self, codes: Any, layers: int) -> F32:
        codes = check_codes(codes, self.codebook_sizes)
        L = self.semantic_layers
        out = self.semantic.decode_prefix(codes[:, :L], min(layers, L))
        for j in range(max(0, layers - L)):
            out += self.id_centroids[j][codes[:, L + j]]
        return out

    def options(self) -> dict[str, Any]:
        return {
            **self.semantic.options(),
            "identity_layers": self.identity_layers,
            "identity_size": self.identity_size,
            "fit_largest_bucket": self.fit_largest_bucket,
        }

    def tensors(self) -> dict[str, F32]:
        L = self.semantic_layers
        return {**self.semantic.tensors(), **{f"layer{L + j}": C for j, C in enumerate(self.id_centroids)}}

    @classmethod
    def from_state(
        cls, tensors: dict[str, F32], options: dict[str, Any], dim: int, codebook_sizes: tuple[int, ...]
    ) -> IdentityPSRQ:
        m = int(options.get("identity_layers", 2))
        semantic_sizes = tuple(codebook_sizes[:-m])
        q = cls(semantic_sizes, **options)
        q.semantic = PSRQ.from_state(tensors, q.semantic.options(), dim, semantic_sizes)
        q.id_centroids = [np.ascontiguousarray(tensors[f"layer{len(semantic_sizes) + j}"], dtype=np.float32) for j in range(m)]
        q._dim = dim
        return q
