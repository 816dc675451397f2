"""benchmarks/bench_eval.py at a tiny size: the JSON keys issue 4 names, the faiss reference's thread setting and
the per-round CPU steal. Timings are not asserted (they belong to the benchmark itself)."""

import json

import numpy as np
import pytest

from benchmarks import bench_eval
from benchmarks.report import steal_fraction
from lib.faiss_backend import import_faiss


def _run(tmp_path, *flags: str) -> dict:
    out = tmp_path / "bench.json"
    argv = ["--n", "600", "--classes", "120", "--dim", "16", "--repeats", "1", "--output", str(out), *flags]
    assert bench_eval.main(argv) == 0
    return json.loads(out.read_text())


def test_reports_the_named_keys_and_the_evaluators_metrics(tmp_path, capsys):
    report = _run(tmp_path)
    assert json.loads(capsys.readouterr().out) == report
    for key in ("eval_s", "faiss_search_s", "peak_rss_mb", "backend"):
        assert key in report
    assert report["faiss_threads"] == import_faiss().omp_get_max_threads()
    embeddings, labels = bench_eval.synthetic_embeddings(600, 120, 16, seed=0)
    assert report["faiss_k"] == max(100, np.bincount(labels).max() - 1) + 1
    assert 0 <= report["metrics"]["MAP@R"] <= report["metrics"]["mARP"] <= 1
    steal = report["rounds"][0]["cpu_steal"]
    assert steal is None or 0 <= steal <= 1


def test_faiss_threads_sets_the_reference_only_and_is_restored(tmp_path):
    faiss = import_faiss()
    before = faiss.omp_get_max_threads()
    assert _run(tmp_path, "--faiss-threads", "1")["faiss_threads"] == 1
    assert faiss.omp_get_max_threads() == before


def test_faiss_threads_below_one_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench_eval.main(["--faiss-threads", "0"])
    assert "--faiss-threads must be at least 1" in capsys.readouterr().err


def test_steal_fraction_is_the_stolen_share_of_the_ticks_between_readings():
    assert steal_fraction((10, 1000), (40, 1200)) == 0.15
    assert steal_fraction((10, 1000), (10, 1000)) is None
    assert steal_fraction(None, (10, 1000)) is None
