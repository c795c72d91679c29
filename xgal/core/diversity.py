"""Choosing k of the best-scoring candidates so that the batch is spread over the model's
embedding (the target layer's activations, globally average-pooled: the graph's `embedding`).

Both choices read the candidate set only (rows in rank order, each with its embedding), never the
rest of the pool: the candidates of a pool are the merge of its shards' candidates (pointwise
scores merge exactly), so a sharded run chooses the same batch as one scorer.

- `spread`: greedy k-center (farthest-first, no random seeding) weighted by rank. The best
  candidate first; then, each time, the candidate with the largest (rank weight × squared
  distance to the nearest chosen one). Near duplicates of a chosen scan have distance ≈ 0 and
  wait; a far but poorly ranked one waits too.
- `typical`: TypiClust (Hacohen et al., 2022), for a first round from a model trained on very few
  labels: k-means into k clusters, then the most typical candidate (inverse mean distance to its
  nearest neighbours) of each cluster, largest clusters first. Scores are not used. Where this
  departs from TypiClust: typicality is measured over all candidates, not within each cluster;
  clusters the labelled set already covers are not put last; and the loop's cold start clusters
  a random sample of the pool (its 20·k candidates), not the whole pool.

Embeddings are L2-normalised first, so the distances do not depend on the activations' scale.
"""

from __future__ import annotations

import numpy as np

from xgal.core.errors import InvalidArgument

KNN = 20  # TypiClust's neighbourhood
MIN_CLUSTER = 5  # TypiClust's smallest cluster to take a representative from
KMEANS_ITERATIONS = 50
_CHUNK = 2048  # rows per block of pairwise distances: memory O(chunk · candidates)


def unit_rows(embedding: np.ndarray) -> np.ndarray:
    e = np.asarray(embedding, dtype=np.float64)
    if e.ndim != 2 or e.shape[1] == 0:
        raise InvalidArgument(
            f"diversity needs each candidate's embedding; got an array of shape {e.shape} (a scoring "
            "graph exported before xgal exported embeddings has none: export it again)"
        )
    if not np.isfinite(e).all():
        raise InvalidArgument("an embedding holds NaN or infinity")
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.maximum(norm, 1e-12)


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def spread(embedding: np.ndarray, k: int) -> np.ndarray:
    """Indices of k rows (given in rank order), in the order chosen."""
    e = unit_rows(embedding)
    m = e.shape[0]
    k = min(k, m)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    weight = 1.0 - np.arange(m) / m  # the best 1, the last 1/m: never 0
    chosen = [0]
    nearest = _sq_dist(e, e[:1])[:, 0]
    taken = np.zeros(m, dtype=bool)
    taken[0] = True
    for _ in range(1, k):
        gain = np.where(taken, -1.0, weight * nearest)
        i = int(np.argmax(gain))  # ties: the better ranked (first) row
        chosen.append(i)
        taken[i] = True
        nearest = np.minimum(nearest, _sq_dist(e, e[i : i + 1])[:, 0])
    return np.asarray(chosen, dtype=np.int64)


def kmeans(e: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster labels of rows `e`: k-means++ seeding from `seed`, then Lloyd's iterations."""
    rng = np.random.default_rng(seed)
    m = e.shape[0]
    centres = [e[int(rng.integers(m))]]
    nearest = _sq_dist(e, centres[0][None])[:, 0]
    for _ in range(1, k):
        total = nearest.sum()
        i = int(rng.choice(m, p=nearest / total)) if total > 0 else int(rng.integers(m))
        centres.append(e[i])
        nearest = np.minimum(nearest, _sq_dist(e, e[i][None])[:, 0])
    c = np.stack(centres)
    labels = np.full(m, -1)
    for _ in range(KMEANS_ITERATIONS):
        new = np.concatenate([_sq_dist(e[i : i + _CHUNK], c).argmin(1) for i in range(0, m, _CHUNK)])
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = labels == j
            if members.any():  # an emptied cluster keeps its centre
                c[j] = e[members].mean(0)
    return labels


def typicality(e: np.ndarray, knn: int = KNN) -> np.ndarray:
    """1 / mean distance to the `knn` nearest other rows (higher = in a denser region)."""
    m = e.shape[0]
    n = min(knn, m - 1)
    if n <= 0:
        return np.ones(m)
    out = np.empty(m)
    for i in range(0, m, _CHUNK):
        d = np.sqrt(_sq_dist(e[i : i + _CHUNK], e))
        d[np.arange(d.shape[0]), np.arange(i, i + d.shape[0])] = np.inf  # not itself
        near = np.partition(d, n - 1, axis=1)[:, :n]
        out[i : i + d.shape[0]] = 1.0 / (near.mean(1) + 1e-12)
    return out


def typical(embedding: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of k rows: the most typical row of each of k clusters, largest clusters first
    (ties: the lower cluster index), clusters of fewer than `MIN_CLUSTER` rows left out; the
    places left are the most typical of the other rows."""
    e = unit_rows(embedding)
    m = e.shape[0]
    k = min(k, m)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    labels = kmeans(e, k, seed)
    typ = typicality(e)
    sizes = np.bincount(labels, minlength=k)
    # As TypiClust: a cluster of a few outliers has no typical member; scaled down for small
    # candidate sets, where every cluster is small.
    min_size = min(MIN_CLUSTER, max(1, m // (2 * k)))
    chosen: list[int] = []
    for j in sorted(range(k), key=lambda j: (-sizes[j], j)):
        members = np.flatnonzero(labels == j)
        if members.size >= min_size:
            chosen.append(int(members[np.argmax(typ[members])]))
    if len(chosen) < k:
        rest = np.setdiff1d(np.arange(m), chosen)
        chosen += rest[np.argsort(-typ[rest], kind="stable")][: k - len(chosen)].tolist()
    return np.asarray(chosen, dtype=np.int64)
