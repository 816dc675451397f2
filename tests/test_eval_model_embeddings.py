"""eval_model.py --embeddings: output keys and values, and one clear message with exit status 2 for bad files."""

import json

import numpy as np
import pytest

from eval_model import main


def separated(n_classes: int, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tight, far-apart classes: every metric is exactly 1 (up to NMI's k-means)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    centres = rng.standard_normal((n_classes, 8)) * 100
    return (centres[labels] + rng.standard_normal((len(labels), 8)) * 0.01).astype(np.float32), labels


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_self_retrieval(tmp_path, capsys):
    x, labels = separated(6, 20)  # N = 120: G = 119 >= 100
    np.savez(tmp_path / "e.npz", X=x, T=labels)
    code, out, _ = run(capsys, "--embeddings", str(tmp_path / "e.npz"), "--nmi-runs", "1", "--json")
    result = json.loads(out)
    assert code == 0
    expected_keys = {
        "R@1",
        "R@2",
        "R@4",
        "R@8",
        "R@10",
        "R@100",
        "NMI",
        "NMI_std",
        "MAP@R",
        "mARP",
        "n_queries",
        "n_queries_R0",
    }
    assert expected_keys <= set(result)
    assert all(result[f"R@{k}"] == 1.0 for k in (1, 2, 4, 8, 10, 100))
    assert result["MAP@R"] == 1.0 and result["mARP"] == 1.0
    assert (result["n_queries"], result["n_queries_R0"]) == (120, 0)
    assert 0 <= result["NMI"] <= 1 and result["NMI_std"] == 0.0


def test_query_gallery_mode_and_recall_limited_by_gallery_size(tmp_path, capsys):
    x, labels = separated(3, 10)
    is_query = np.arange(30) % 2 == 0
    np.savez(tmp_path / "qg.npz", X=x, T=labels.astype(str), is_query=is_query, is_gallery=~is_query)
    code, out, _ = run(capsys, "--embeddings", str(tmp_path / "qg.npz"), "--nmi-runs", "1", "--json")
    result = json.loads(out)
    assert code == 0 and result["n_queries"] == 15
    assert "R@10" in result and "R@100" not in result  # G = 15
    assert result["R@1"] == 1.0 and result["MAP@R"] == 1.0


def test_table_prints_percentages(tmp_path, capsys):
    x, labels = separated(3, 3)
    np.savez(tmp_path / "t.npz", X=x, T=labels)
    code, out, _ = run(capsys, "--embeddings", str(tmp_path / "t.npz"), "--nmi-runs", "2")
    assert code == 0
    assert "R@1    100.00" in out and "MAP@R" in out and "mARP" in out and "±" in out
    assert "R@8 " in out and "R@10" not in out  # G = 8


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


GOOD_X = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
GOOD_T = np.array([0, 0, 1, 1, 2, 2])
NAN_X = GOOD_X.copy()
NAN_X[2, 1] = np.nan


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"X": GOOD_X}, "lacks T"),
        ({"T": GOOD_T}, "lacks X"),
        ({"X": GOOD_X[0], "T": GOOD_T}, "N x D"),
        ({"X": GOOD_X, "T": GOOD_T[:5]}, "one label per row"),
        ({"X": NAN_X, "T": GOOD_T}, "NaN"),
        ({"X": GOOD_X, "T": np.zeros(6, dtype=int)}, "same label"),
        ({"X": GOOD_X, "T": GOOD_T.astype(float)}, "integer or string"),
        ({"X": GOOD_X.astype(bool), "T": GOOD_T}, "real numbers"),
        ({"X": GOOD_X, "T": np.array([object()] * 6, dtype=object)}, "cannot read"),
        ({"X": GOOD_X, "T": GOOD_T, "is_query": np.ones(6, dtype=bool)}, "both is_query and is_gallery"),
        (
            {"X": GOOD_X, "T": GOOD_T, "is_query": np.ones(6, dtype=bool), "is_gallery": np.ones(6, dtype=bool)},
            "disjoint",
        ),
        ({"X": GOOD_X, "T": GOOD_T, "is_query": np.ones(6), "is_gallery": np.zeros(6, dtype=bool)}, "boolean"),
        ({"X": GOOD_X, "T": np.arange(6)}, "every label occurs once"),
        (
            {
                "X": GOOD_X,
                "T": np.array([0, 1, 2, 3, 3, 4]),
                "is_query": np.arange(6) < 3,
                "is_gallery": np.arange(6) >= 3,
            },
            "no query has another item of its label in the gallery",
        ),
    ],
)
def test_bad_files_give_one_message_and_status_2(tmp_path, capsys, arrays, message):
    path = write_npz(tmp_path / "bad.npz", **arrays)
    code, out, err = run(capsys, "--embeddings", str(path))
    assert code == 2 and out == ""
    assert message in err and err.startswith("error:") and "Traceback" not in err


def test_files_that_are_not_npz_archives(tmp_path, capsys):
    np.save(tmp_path / "single.npy", GOOD_X)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "text.npz").write_text("X,T\n0.5,1\n")  # numpy would take it for a pickle
    for path, message in (
        (tmp_path / "single.npy", "single array"),
        (tmp_path / "junk.npz", "not a readable"),
        (tmp_path / "text.npz", "is not an .npz archive (no zip signature)"),
        (tmp_path / "missing.npz", "no such file"),
    ):
        code, _, err = run(capsys, "--embeddings", str(path))
        assert code == 2 and message in err and "pickle" not in err


def test_usage_errors():
    with pytest.raises(SystemExit) as exit_info:
        main(["--embeddings", "a.npz", "--nmi-runs", "0"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main([])
    with pytest.raises(SystemExit):
        main(["--embed", "a.npz"])  # abbreviations are not accepted
