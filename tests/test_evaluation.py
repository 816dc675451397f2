"""The evaluator on hand-computed 1-D cases, against a brute-force oracle, and across engines."""

import numpy as np
import pytest
import torch

import lib.knn as knn_module
import metriclearning.evaluation as evaluation
from lib.knn_keys import make_keys
from metriclearning.evaluation import evaluate_retrieval, evaluate_vid
from metriclearning.metrics import nmi
from tests.devices import cuda_only


def points(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)[:, None]


def test_self_retrieval_hand_case():
    # positions 0, 1, 3, 10, 11 with labels a, b, a, b, b
    x, labels = points(0, 1, 3, 10, 11), np.array(["a", "b", "a", "b", "b"])
    result = evaluate_retrieval(x, labels, recall_ks=(1, 2, 4, 5, 8), with_nmi=False)
    # neighbours (own index excluded): 0 -> 1, 2 | 1 -> 0, 2 | 2 -> 1, 0 | 3 -> 4, 2 | 4 -> 3, 2
    # first same-label rank: 0: 2, 1: 3 (1 -> 0,2,3), 2: 2, 3: 1, 4: 1
    assert result["R@1"] == pytest.approx(2 / 5) and result["R@2"] == pytest.approx(4 / 5)
    assert result["R@4"] == 1.0 and "R@5" not in result and "R@8" not in result  # G = N - 1 = 4: k = N is left out
    # R_q: a -> 1, b -> 2. AP (MAP@R): 0: 0, 1: 0 (top 2: 0, 2), 2: 0, 3: (1 + 0) / 2, 4: 1/2
    assert result["MAP@R"] == pytest.approx(1 / 5)
    # mARP divides by the hits within the top R: 3 -> 1, 4 -> 1, others 0
    assert result["mARP"] == pytest.approx(2 / 5)
    assert (result["n_queries"], result["n_queries_R0"]) == (5, 0)
    assert result["NMI"] is None and result["NMI_std"] is None
    assert "knn_method" in result


def test_near_ties_inside_the_first_r_are_ordered_exactly(monkeypatch):
    """MAP@R needs the order of each query's first R neighbours, not only the R@k sets: with recall_ks (4,) a
    float32 tie between items 1 (B, exact distance 1 + 1e-6) and 2 (A, exactly 1) in query 0's pool must still
    be resolved, or query 0's precision at 1 turns from 1 to 0."""
    x = np.array([[0, 0], [1, 1e-3], [1, 0], [2, 0], [3, 0]], dtype=np.float32)
    labels = np.array(["A", "B", "A", "A", "C"])
    expected = evaluate_retrieval(x, labels, recall_ks=(4,), with_nmi=False)
    engine = knn_module.cpu_self_search

    def rounding_engine(*args):
        keys = engine(*args)
        keys[0] = make_keys(np.array([0, 1, 1, 4, 9], dtype=np.float32), np.arange(5))
        return keys

    monkeypatch.setattr(knn_module, "cpu_self_search", rounding_engine)
    result = evaluate_retrieval(x, labels, recall_ks=(4,), with_nmi=False)
    assert result["MAP@R"] == pytest.approx(expected["MAP@R"]) and result["mARP"] == pytest.approx(expected["mARP"])
    with pytest.raises(ValueError, match="recall_ks must be positive"):
        evaluate_retrieval(x, labels, recall_ks=(0, 1), with_nmi=False)


def test_query_gallery_hand_case_with_a_query_class_missing_from_the_gallery():
    x = points(0, 10, 20, 1, 9, 11, 2)
    labels = np.array([0, 1, 2, 0, 1, 1, 0])
    query = np.array([1, 1, 1, 0, 0, 0, 0], dtype=bool)
    gallery = ~query
    result = evaluate_retrieval(
        x, labels, recall_ks=(1, 2, 4, 8), with_nmi=False, query_mask=query, gallery_mask=gallery
    )
    # gallery: 1 (0), 9 (1), 11 (1), 2 (0). query 0 -> 1, 2: hit at 1; R = 2: AP = (1 + 1) / 2
    # query 10 -> 9, 11: R = 2, AP = 1; query 20 (class 2, absent) -> R = 0
    assert result["R@1"] == pytest.approx(2 / 3) and result["R@4"] == pytest.approx(2 / 3)
    assert "R@8" not in result
    assert result["MAP@R"] == pytest.approx(1.0)
    assert result["mARP"] == pytest.approx(2 / 3)
    assert (result["n_queries"], result["n_queries_R0"]) == (3, 1)


def brute_force(x: np.ndarray, labels: np.ndarray) -> dict:
    """Full sort per query (own index excluded, ties by index), then the definitions of METHOD.md §8.2."""
    recalls, aps, arps = {k: [] for k in (1, 10)}, [], []
    for i in range(len(x)):
        distances = ((x.astype(np.float64) - x[i]) ** 2).sum(1)
        order = [j for j in sorted(range(len(x)), key=lambda j: (distances[j], j)) if j != i]
        hits = labels[order] == labels[i]
        for k in recalls:
            recalls[k].append(hits[:k].any())
        r = int(hits.sum())
        precision = np.cumsum(hits[:r]) / np.arange(1, r + 1)
        total = (precision * hits[:r]).sum()
        aps.append(total / r)
        arps.append(total / hits[:r].sum() if hits[:r].any() else 0.0)
    return {"R@1": np.mean(recalls[1]), "R@10": np.mean(recalls[10]), "MAP@R": np.mean(aps), "mARP": np.mean(arps)}


@pytest.mark.parametrize("backend", ["auto", "faiss-flat"])
def test_large_class_drives_k_and_matches_brute_force(backend):
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.zeros(40, dtype=int), np.repeat(np.arange(1, 21), 3)])  # one class of 40
    x = (rng.standard_normal((100, 8)) + 1.5 * (labels[:, None] % 5)).astype(np.float32)
    result = evaluate_retrieval(x, labels, recall_ks=(1, 10), with_nmi=False, backend=backend)
    expected = brute_force(x, labels)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value), key


def test_engines_and_tensor_inputs_agree():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 30, 300)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    reference = evaluate_retrieval(x, labels, recall_ks=(1, 2, 4, 8), with_nmi=False, backend="faiss-flat")
    for embeddings, backend in ((torch.from_numpy(x), "auto"), (x, "torch+sklearn")):
        result = evaluate_retrieval(
            embeddings, torch.from_numpy(labels), recall_ks=(1, 2, 4, 8), with_nmi=False, backend=backend
        )
        assert {k: v for k, v in result.items() if k != "knn_method"} == {
            k: v for k, v in reference.items() if k != "knn_method"
        }


@cuda_only
def test_cuda_embeddings_and_the_cpu_give_the_same_metrics():
    """Embeddings left on the GPU by the model: the neighbours are searched there, with the same results."""
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(150), 4)
    x = (rng.standard_normal((150, 32))[labels] + 0.8 * rng.standard_normal((600, 32))).astype(np.float32)
    reference = evaluate_retrieval(x, labels, recall_ks=(1, 10), with_nmi=True, backend="auto", device="cpu")
    result = evaluate_retrieval(torch.from_numpy(x).cuda(), labels, recall_ks=(1, 10), with_nmi=True, backend="auto")
    assert "cuda" in result["knn_method"] and "cpu" in reference["knn_method"]
    assert {k: v for k, v in result.items() if k != "knn_method"} == {
        k: v for k, v in reference.items() if k != "knn_method"
    }


def test_cpu_engine_on_class_sorted_data_agrees_with_faiss():
    """Default blocks: a sample phase and several spans; the dataset stored class after class."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(250), 8)
    x = (rng.standard_normal((250, 12))[labels] + 0.7 * rng.standard_normal((2000, 12))).astype(np.float32)
    reference = evaluate_retrieval(x, labels, recall_ks=(1, 10, 100), with_nmi=False, backend="faiss-flat")
    result = evaluate_retrieval(x, labels, recall_ks=(1, 10, 100), with_nmi=False, backend="auto")
    assert result["knn_method"] == "blocked sgemm (symmetric) (cpu)"
    assert {k: v for k, v in result.items() if k != "knn_method"} == {
        k: v for k, v in reference.items() if k != "knn_method"
    }
    assert 0.3 < result["R@1"] < 1


def test_nmi_uses_query_and_gallery_points_only(monkeypatch):
    seen = {}

    def fake_nmi(features, labels, *, n_runs, backend, device):
        seen.update(features=features, labels=labels, n_runs=n_runs)
        return 0.5, 0.1

    monkeypatch.setattr(evaluation, "nmi", fake_nmi)
    x, labels = points(0, 1, 2, 3, 4), np.array([0, 1, 0, 1, 2])
    query = np.array([1, 1, 0, 0, 0], dtype=bool)
    gallery = np.array([0, 0, 1, 1, 0], dtype=bool)
    result = evaluate_retrieval(
        x, labels, recall_ks=(1,), with_nmi=True, nmi_runs=3, query_mask=query, gallery_mask=gallery
    )
    np.testing.assert_array_equal(seen["features"][:, 0], [0, 1, 2, 3])
    assert len(np.unique(seen["labels"])) == 2 and seen["n_runs"] == 3
    assert (result["NMI"], result["NMI_std"]) == (0.5, 0.1)


def test_self_retrieval_nmi_clusters_every_point_with_the_given_seeds():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(5), 8)
    x = (np.eye(5)[labels] * 3 + rng.standard_normal((40, 5))).astype(np.float32)
    result = evaluate_retrieval(x, labels, recall_ks=(1,), with_nmi=True, nmi_runs=2)
    assert (result["NMI"], result["NMI_std"]) == nmi(x, labels, n_runs=2)
    assert 0 < result["NMI"] <= 1 and result["NMI_std"] >= 0


@pytest.mark.parametrize(
    ("query", "gallery", "message"),
    [
        (np.array([1, 0, 0], dtype=bool), None, "both"),
        (np.array([1, 1, 0], dtype=bool), np.array([0, 1, 1], dtype=bool), "disjoint"),
        (np.array([1, 0, 0]), np.array([0, 1, 1], dtype=bool), "boolean"),
        (np.zeros(3, dtype=bool), np.ones(3, dtype=bool), "at least one"),
    ],
)
def test_bad_masks_raise(query, gallery, message):
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval(
            points(0, 1, 2), np.array([0, 1, 0]), recall_ks=(1,), with_nmi=False, query_mask=query, gallery_mask=gallery
        )


def test_vid_prefixes_the_small_and_medium_lists():
    small = (points(0, 1, 10, 11), np.array([0, 0, 1, 1]))
    large = (points(0, 1, 10, 11, 5, 30), np.array([0, 1, 0, 1, 2, 2]))
    result = evaluate_vid({"small": small, "large": large}, with_nmi=False)
    assert result["R@1"] == 0.0 and result["small/R@1"] == 1.0
    assert "small/MAP@R" in result and not any(key.startswith("medium/") for key in result)
    with pytest.raises(ValueError, match="large"):
        evaluate_vid({"small": small}, with_nmi=False)
