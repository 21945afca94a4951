"""k-means as the DynACL++ and AIR++ releases run it: ``kmeans_pytorch.kmeans`` (PyPI 0.3).

The algorithm, read from that package (re-implemented here in torch):

* init: ``k`` distinct data points drawn at random (``np.random.choice(n, k, replace=False)``;
  the releases set no seed: acbench draws them with a seeded ``torch.Generator``);
* repeat: assign every point to the centre at the smallest squared Euclidean distance
  (``((x_i - c_j) ** 2).sum()``, ties to the lower index); remember the centres; move each centre to
  the mean of its points; shift = sum over centres of |c_j - c_j'|_2; stop when shift ** 2 < tol;
* return the labels of the last assignment (made *before* the last centre update) and the centres
  after it; float32 throughout; no iteration limit.

Empty clusters: the package takes the mean of no points (NaN), after which every distance to that
centre is NaN and the loop never meets its stopping rule (it runs forever). Any labels the releases
produced therefore come from runs without an empty cluster, where this implementation is the same;
here an empty cluster keeps its previous centre (and the run terminates), and ``max_iter`` bounds
the loop (the result says whether it converged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK_ELEMENTS = 1 << 24  # rows x centres x dims per distance block (bounds memory)


@dataclass(frozen=True)
class KMeansResult:
    labels: torch.Tensor  # int64 [n]
    centers: torch.Tensor  # float32 [k, d]
    iterations: int
    converged: bool
    empty: int  # cluster-iterations that had no point (the release would not terminate)


def initial_indices(n: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``k`` distinct row indices drawn uniformly (the package's ``np.random.choice(n, k, replace=False)``)."""
    if not 2 <= k <= n:
        raise ValueError(f"k-means needs 2 <= k <= n points, got k={k}, n={n}")
    return torch.randperm(n, generator=generator)[:k]


def squared_distances(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """[n, k] squared Euclidean distances, computed as the package does (difference, square, sum
    over the last dim), in row blocks."""
    rows = max(1, CHUNK_ELEMENTS // max(1, centers.shape[0] * centers.shape[1]))
    out = [((x[i : i + rows, None, :] - centers[None]) ** 2.0).sum(dim=-1) for i in range(0, len(x), rows)]
    return torch.cat(out)


def kmeans(
    x: torch.Tensor,
    k: int,
    tol: float = 1e-4,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    max_iter: int = 10_000,
) -> KMeansResult:
    """Cluster the rows of ``x`` into ``k`` clusters (``init``: the initial centres' row indices;
    default: drawn with ``generator``)."""
    x = x.float()
    idx = initial_indices(len(x), k, generator) if init is None else torch.as_tensor(init, dtype=torch.long)
    centers = x[idx.to(x.device)].clone()
    iterations, empty = 0, 0
    while True:
        labels = torch.argmin(squared_distances(x, centers), dim=1)
        previous = centers.clone()
        for j in range(k):
            members = x[labels == j]
            if len(members):
                centers[j] = members.mean(dim=0)
            else:
                empty += 1
        shift = torch.sum(torch.sqrt(torch.sum((centers - previous) ** 2, dim=1)))
        iterations += 1
        if shift**2 < tol:
            return KMeansResult(labels, centers, iterations, True, empty)
        if iterations >= max_iter:
            return KMeansResult(labels, centers, iterations, False, empty)
