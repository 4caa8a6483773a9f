"""Bag statistics for tree models: a PCA and k-means fitted on training cells only, then
per-bag mean/std/min/max/quantiles of the components, cluster fractions and bag size."""

from __future__ import annotations

import numpy as np

QUANTILES = (0.1, 0.5, 0.9)


def _sqdist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]


def kmeans(
    x: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 2, iters: int = 30
) -> np.ndarray:
    """Seeded k-means (k-means++ starts, Lloyd steps, best of ``n_init``); plain numpy, so
    no OpenMP pool competes with torch or LightGBM for the cores. Returns (k, d) centres."""
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        centers = [x[rng.integers(len(x))]]
        for _ in range(1, k):
            d = np.maximum(_sqdist(x, np.asarray(centers)).min(1), 0.0)
            p = d / d.sum() if d.sum() > 0 else None
            centers.append(x[rng.choice(len(x), p=p)])
        c = np.asarray(centers)
        for _ in range(iters):
            assign = _sqdist(x, c).argmin(1)
            new = np.array(
                [x[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)]
            )
            if np.allclose(new, c):
                break
            c = new
        inertia = np.maximum(_sqdist(x, c).min(1), 0.0).sum()
        if inertia < best_inertia:
            best, best_inertia = c, inertia
    return best


class BagStats:
    """Fit on training bags (``fit``), transform any bags (``transform``) to a fixed-width table."""

    def __init__(
        self, n_components: int = 16, n_clusters: int = 8, max_fit_cells: int = 5000, seed: int = 0
    ) -> None:
        self.n_components = n_components
        self.n_clusters = n_clusters
        self.max_fit_cells = max_fit_cells
        self.seed = seed

    def fit(self, bags: list[np.ndarray]) -> BagStats:
        from cellbag.aggregate.base import blas_single_thread

        with blas_single_thread():
            return self._fit(bags)

    def _fit(self, bags: list[np.ndarray]) -> BagStats:
        rng = np.random.default_rng(self.seed)
        cells = np.concatenate(bags)
        if len(cells) > self.max_fit_cells:
            cells = cells[np.sort(rng.choice(len(cells), self.max_fit_cells, replace=False))]
        cells = cells.astype(np.float64)
        self.mean_ = cells.mean(axis=0)
        centred = cells - self.mean_
        cov = centred.T @ centred / max(len(cells) - 1, 1)
        vals, vecs = np.linalg.eigh(cov)
        k = int(min(self.n_components, cells.shape[1], max(len(cells) - 1, 1)))
        comps = vecs[:, ::-1][:, :k].T
        # a fixed sign per component (largest |loading| positive) makes the PCA reproducible
        signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
        self.components_ = comps * np.where(signs == 0, 1.0, signs)[:, None]
        self.explained_variance_ = vals[::-1][:k]
        proj = centred @ self.components_.T
        n_clusters = int(min(self.n_clusters, len(cells)))
        self.centers_ = kmeans(proj, n_clusters, rng)
        return self

    def project(self, bag: np.ndarray) -> np.ndarray:
        return (bag.astype(np.float64) - self.mean_) @ self.components_.T

    def assign(self, proj: np.ndarray) -> np.ndarray:
        return _sqdist(proj, self.centers_).argmin(axis=1)

    def transform(self, bags: list[np.ndarray]) -> np.ndarray:
        from cellbag.aggregate.base import blas_single_thread

        with blas_single_thread():
            return self._transform(bags)

    def _transform(self, bags: list[np.ndarray]) -> np.ndarray:
        rows = []
        k = len(self.centers_)
        for b in bags:
            p = self.project(b)
            q = np.quantile(p, QUANTILES, axis=0).ravel()
            frac = np.bincount(self.assign(p), minlength=k) / len(p)
            rows.append(
                np.concatenate([p.mean(0), p.std(0), p.min(0), p.max(0), q, frac, [np.log(len(p))]])
            )
        return np.asarray(rows, dtype=np.float64)

    def feature_names(self) -> list[str]:
        k = self.components_.shape[0]
        names = []
        for stat in ("mean", "std", "min", "max"):
            names += [f"pc{i}_{stat}" for i in range(k)]
        for q in QUANTILES:
            names += [f"pc{i}_q{int(q * 100)}" for i in range(k)]
        names += [f"cluster{j}_frac" for j in range(len(self.centers_))]
        return names + ["log_n_cells"]

    def state(self) -> dict[str, np.ndarray]:
        return {
            "pca_mean": self.mean_,
            "pca_components": self.components_,
            "pca_explained_variance": self.explained_variance_,
            "kmeans_centers": self.centers_,
        }

    def set_state(self, arrays: dict[str, np.ndarray]) -> BagStats:
        self.mean_ = arrays["pca_mean"]
        self.components_ = arrays["pca_components"]
        self.explained_variance_ = arrays["pca_explained_variance"]
        self.centers_ = arrays["kmeans_centers"]
        return self
