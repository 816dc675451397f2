"""k-means on the selected backend: faiss (CPU or GPU) or scikit-learn.

One function serves the reclustering, the cluster splits and the NMI metric, so every caller uses the backend
and device the user chose (the original always used faiss-GPU for splits, METHOD.md §10 #17).
"""

from dataclasses import dataclass

import numpy as np

from lib.faiss_backend import import_faiss

BACKENDS = ("faiss", "faiss-gpu", "torch+sklearn")


@dataclass(frozen=True)
class KMeansResult:
    assignment: np.ndarray  # int64 (N,): index of the nearest centroid
    centroids: np.ndarray  # float32 (k, d)


def kmeans(
    features: np.ndarray,
    k: int,
    seed: int,
    backend: str = "faiss",
    niter: int = 100,
    device: int | None = None,
    init_centroids: np.ndarray | None = None,
) -> KMeansResult:
    """Cluster ``features`` into ``k`` groups; each point goes to its nearest centroid.

    faiss runs one trial with ``niter`` iterations and no subsampling of points; scikit-learn runs
    ``n_init=10, max_iter=300`` (METHOD.md §3.4). ``init_centroids`` starts from given centroids (one run).
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    n = x.shape[0]
    if x.ndim != 2 or n == 0:
        raise ValueError(f"k-means needs a non-empty (N, d) array, got shape {x.shape}")
    if not 1 <= k <= n:
        raise ValueError(f"k-means with k={k} needs 1 <= k <= N={n}")
    if k == 1:
        return KMeansResult(np.zeros(n, dtype=np.int64), x.mean(axis=0, keepdims=True).astype(np.float32))
    if backend in ("faiss", "faiss-gpu"):
        return _faiss_kmeans(
            x, k, seed, niter, gpu_device=device if backend == "faiss-gpu" else None, init_centroids=init_centroids
        )
    if backend == "torch+sklearn":
        return _sklearn_kmeans(x, k, seed, init_centroids)
    raise ValueError(f"unknown k-means backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _faiss_kmeans(x, k, seed, niter, gpu_device, init_centroids) -> KMeansResult:
    faiss = import_faiss()
    d = x.shape[1]
    clustering = faiss.Clustering(d, k)
    clustering.niter = niter
    clustering.nredo = 1
    clustering.seed = int(seed) % (2**31)
    clustering.verbose = False
    clustering.max_points_per_centroid = max(x.shape[0], 1)  # never subsample the points
    clustering.min_points_per_centroid = 1
    if init_centroids is not None:
        clustering.centroids.resize(0)
        faiss.copy_array_to_vector(np.ascontiguousarray(init_centroids, dtype=np.float32).ravel(), clustering.centroids)
    if gpu_device is None:
        index = faiss.IndexFlatL2(d)
    else:
        resources = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.device = int(gpu_device)
        index = faiss.GpuIndexFlatL2(resources, d, config)
    clustering.train(x, index)
    centroids = faiss.vector_to_array(clustering.centroids).reshape(k, d).astype(np.float32)
    index.reset()
    index.add(centroids)
    _, nearest = index.search(x, 1)
    return KMeansResult(nearest[:, 0].astype(np.int64), centroids)


def _sklearn_kmeans(x, k, seed, init_centroids) -> KMeansResult:
    from sklearn.cluster import KMeans

    if init_centroids is not None:
        model = KMeans(
            n_clusters=k, init=np.asarray(init_centroids, dtype=np.float32), n_init=1, max_iter=300, random_state=seed
        )
    else:
        model = KMeans(n_clusters=k, n_init=10, max_iter=300, random_state=seed)
    model.fit(x)
    return KMeansResult(model.labels_.astype(np.int64), model.cluster_centers_.astype(np.float32))
