"""eval_model.py PATH on real run folders written by train.py: metrics, JSON files, damaged and moved runs.

One tiny glyphs run is trained once for the module; tests that damage a run work on a copy.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import eval_model
import train
from dataset.base import Split
from eval_model import find_runs, format_run_table, main, main_set_embeddings
from experiment.protocol import EvalTask
from lib.checkpoint import load_checkpoint, save_checkpoint

TRAIN_ARGS = [
    "--experiment", "margin_loss_resnet50", "--dataset", "glyphs", "--glyphs-classes", "12", "--glyphs-renders", "1",
    "--sz-resize", "32", "--sz-crop", "32", "--arch", "resnet18", "--pretrained", "0", "--sz-embedding", "16",
    "--batch-size", "16", "--num-samples-per-class", "4", "--num-workers", "0", "--nb-epochs", "1",
    "--backend", "faiss", "-i", "ev",
]  # fmt: skip
METRIC_KEYS = {"R@1", "R@2", "R@4", "R@8", "NMI", "NMI_std", "MAP@R", "mARP", "n_queries", "n_queries_R0"}
N_EVAL = 6 * 16  # glyphs: 6 eval classes x 16 faces x 1 render


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """The run folder of a one-epoch training; read-only for the tests."""
    cwd = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        assert train.main(TRAIN_ARGS) == 0
    [run] = [p for p in (cwd / "log").glob("*/*") if p.is_dir()]
    return run


def copy_run(run: Path, parent: Path, name: str | None = None) -> Path:
    target = parent / (name or run.name)
    shutil.copytree(run, target)
    return target


def evaluate(capsys, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--nmi-runs", "1"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def best_record(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
    best_epoch = records[-1]["best_epoch"]
    return next(r for r in records if r["epoch"] == best_epoch)


def test_best_matches_the_training_record_and_writes_json_next_to_the_checkpoint(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    code, out, err = evaluate(capsys, str(run))
    assert code == 0, err
    assert run.name in out and "R@1" in out and "MAP@R" in out and "±" in out
    assert "  kNN: blocked sgemm (symmetric) (cpu)" in out.splitlines()  # the engine that ran
    assert "warning" not in err
    saved = json.loads((run / "checkpoints" / "best.eval.json").read_text())
    assert METRIC_KEYS | {"run", "checkpoint", "epoch"} <= set(saved)
    assert saved["run"] == run.name and saved["epoch"] == 0 and saved["best_epoch"] == 0
    assert saved["K"] == 1 and saved["K_final"] == 1 and saved["n_queries"] == N_EVAL
    recorded = best_record(run)
    for key in ("R@1", "R@2", "R@4", "R@8", "MAP@R", "mARP"):
        assert saved[key] == pytest.approx(recorded[key], abs=1e-6), key
    # Training's NMI is one k-means run with seed 0, the first of eval_model's seeds.
    assert saved["NMI"] == pytest.approx(recorded["NMI"], abs=1e-6) and saved["NMI_std"] == 0.0
    assert f"{100 * saved['R@1']:.2f}" in out


def test_last_with_json_and_a_relative_path_with_trailing_slash(trained_run, tmp_path, capsys, monkeypatch):
    run = copy_run(trained_run, tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    code, out, err = evaluate(capsys, f"runs/{run.name}/", "--checkpoint", "last", "--json")
    assert code == 0, err
    result = json.loads(out)  # one run: a single object
    assert isinstance(result, dict) and set(result) >= METRIC_KEYS
    assert result["run"] == run.name and result["epoch"] == 0
    assert Path(result["checkpoint"]).name == "last.pt"
    assert json.loads((run / "checkpoints" / "last.eval.json").read_text())["R@1"] == result["R@1"]
    assert not (run / "checkpoints" / "best.eval.json").exists()


def test_saved_embeddings_re_evaluate_to_the_same_metrics(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    target = tmp_path / "out" / "emb.npz"
    code, out, err = evaluate(capsys, str(run), "--json", "--save-embeddings", str(target))
    assert code == 0, err
    from_run = json.loads(out)
    with np.load(target, allow_pickle=False) as arrays:
        assert set(arrays.files) == {"X", "T"}
        assert arrays["X"].shape == (N_EVAL, 16) and arrays["T"].shape == (N_EVAL,)
        assert np.allclose(np.linalg.norm(arrays["X"], axis=1), 1.0, atol=1e-5)
    code, out, err = evaluate(capsys, "--embeddings", str(target), "--json")
    assert code == 0, err
    from_file = json.loads(out)
    for key in METRIC_KEYS:
        assert from_file[key] == pytest.approx(from_run[key], abs=1e-9), key


def test_folder_of_runs_with_a_truncated_checkpoint_evaluates_the_other(trained_run, tmp_path, capsys):
    root = tmp_path / "many"
    good = copy_run(trained_run, root / "group", "good-run")
    broken = copy_run(trained_run, root, "broken-run")
    checkpoint = broken / "checkpoints" / "best.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    code, out, err = evaluate(capsys, str(root), "--json", "--save-embeddings", str(tmp_path / "e.npz"))
    assert code == 2
    results = json.loads(out)  # several runs: a list in path order
    assert [r["run"] for r in results] == ["broken-run", "good-run"]
    assert "truncated" in results[0]["error"] and "R@1" not in results[0]
    assert set(results[1]) >= METRIC_KEYS and "error" not in results[1]
    [line] = [line for line in err.splitlines() if "cannot be evaluated" in line]
    assert line.startswith("broken-run:") and str(checkpoint) in line
    assert (good / "checkpoints" / "best.eval.json").is_file()
    assert not (broken / "checkpoints" / "best.eval.json").exists()
    assert (tmp_path / "e-good-run.npz").is_file() and not (tmp_path / "e-broken-run.npz").exists()


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [("sz_embedding", 0, "--sz-embedding"), ("sz_crop", -3, "--sz-crop"), ("dataset", "imagenet", "dataset")],
)
def test_a_config_with_impossible_values_is_reported_and_the_next_run_still_runs(
    trained_run, tmp_path, capsys, key, value, named
):
    damaged = copy_run(trained_run, tmp_path / "runs", "a-damaged")
    good = copy_run(trained_run, tmp_path / "runs", "b-good")
    config = json.loads((damaged / "config.json").read_text())
    config[key] = value
    (damaged / "config.json").write_text(json.dumps(config))
    code, out, err = evaluate(capsys, str(tmp_path / "runs"))
    assert code == 2
    [line] = [line for line in err.splitlines() if "cannot be evaluated" in line]
    assert line.startswith("a-damaged: cannot be evaluated") and named in line and "damaged" in line
    assert "b-good" in out and (good / "checkpoints" / "best.eval.json").is_file()


def test_an_edited_config_is_evaluated_as_it_is_with_a_warning(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["sz_crop"] = 24
    (run / "config.json").write_text(json.dumps(config))
    code, _, err = evaluate(capsys, str(run), "--json")
    assert code == 0
    [line] = [line for line in err.splitlines() if "warning" in line]
    assert f"{run.name}: warning: the settings in config.json hash to" in line
    assert config["derived"]["config_hash"] in line and "edited" in line


def test_an_unexpected_error_in_one_run_is_reported_and_the_next_run_still_runs(
    trained_run, tmp_path, capsys, monkeypatch
):
    copy_run(trained_run, tmp_path / "runs", "a-first")
    copy_run(trained_run, tmp_path / "runs", "b-second")
    real_evaluate_run = eval_model.evaluate_run

    def failing_first(run_dir, options, device):
        if run_dir.name == "a-first":
            raise ZeroDivisionError("a bug somewhere")
        return real_evaluate_run(run_dir, options, device)

    monkeypatch.setattr(eval_model, "evaluate_run", failing_first)
    code, out, err = evaluate(capsys, str(tmp_path / "runs"), "--json")
    assert code == 2
    first, second = json.loads(out)
    assert first["error"] == "unexpected ZeroDivisionError: a bug somewhere"
    assert "a-first: cannot be evaluated: unexpected ZeroDivisionError: a bug somewhere" in err
    assert second["run"] == "b-second" and "R@1" in second


def test_missing_dataset_dir_is_reported_with_the_override_hint(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["dataset"] = "folder"  # a dataset that lives on disk, moved away since training
    (run / "config.json").write_text(json.dumps(config))
    nowhere = tmp_path / "moved-data"
    code, out, err = evaluate(capsys, str(run), "--dataset-dir", str(nowhere))
    assert code == 2 and out == ""
    [line] = [line for line in err.splitlines() if "cannot be evaluated" in line]  # also: a warning on the edit
    assert line.startswith(f"{run.name}: cannot be evaluated") and str(nowhere) in line and "--dataset-dir" in line


def test_checkpoint_file_elsewhere_and_json_written_next_to_it(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    elsewhere = tmp_path / "kept" / "snapshot.pt"
    elsewhere.parent.mkdir()
    shutil.copy(run / "checkpoints" / "last.pt", elsewhere)
    code, out, err = evaluate(capsys, str(run), "--checkpoint", str(elsewhere), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["checkpoint"] == str(elsewhere) and result["epoch"] == 0
    assert json.loads((tmp_path / "kept" / "snapshot.eval.json").read_text())["R@1"] == result["R@1"]
    assert result["R@1"] == pytest.approx(best_record(run)["R@1"], abs=1e-6)  # one epoch: last is best


def test_weights_that_do_not_fit_are_reported(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    state["model"]["embedding.weight"] = torch.zeros(8, state["model"]["embedding.weight"].shape[1])
    save_checkpoint(run / "checkpoints" / "best.pt", state)
    code, _, err = evaluate(capsys, str(run))
    assert code == 2
    assert "do not fit" in err and "embedding.weight" in err


def test_missing_config_unknown_checkpoint_and_other_config_are_reported(trained_run, tmp_path, capsys):
    no_config = copy_run(trained_run, tmp_path / "a", "no-config")
    (no_config / "config.json").unlink()
    code, _, err = evaluate(capsys, str(no_config))
    assert code == 2 and "config.json is missing" in err
    run = copy_run(trained_run, tmp_path / "b")
    code, _, err = evaluate(capsys, str(run), "--checkpoint", "ep0007")
    assert code == 2 and "--checkpoint ep0007" in err
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    save_checkpoint(run / "checkpoints" / "other.pt", {**state, "config_hash": "0badc0de"})
    code, _, err = evaluate(capsys, str(run), "--checkpoint", "other")
    assert code == 2 and "another config" in err and "0badc0de" in err


def test_path_without_runs_is_one_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = evaluate(capsys, str(tmp_path / "empty"))
    assert code == 2 and err.startswith("error: no run folder")
    code, _, err = evaluate(capsys, str(tmp_path / "absent"))
    assert code == 2 and "is not a folder" in err


def test_runs_behind_links_are_found_once(tmp_path):
    logs, scratch = tmp_path / "logs", tmp_path / "scratch"
    (logs / "a" / "checkpoints").mkdir(parents=True)  # a run without config.json still counts (reported later)
    (scratch / "b").mkdir(parents=True)
    (scratch / "b" / "config.json").write_text("{}")
    (logs / "b").symlink_to(scratch / "b", target_is_directory=True)
    (logs / "loop").symlink_to(logs, target_is_directory=True)
    assert find_runs(logs) == [logs / "a", logs / "b"]


def test_query_gallery_embeddings_are_saved_in_the_embeddings_format():
    classes = ("a", "b")
    queries = Split("query", ["q0", "q1"], np.array([0, 1]), classes)
    gallery = Split("gallery", ["g0", "g1", "g2"], np.array([1, 0, 1]), classes)
    embedded = {id(queries): np.full((2, 3), 1.0, np.float32), id(gallery): np.full((3, 3), 2.0, np.float32)}
    arrays = main_set_embeddings(EvalTask("", queries, gallery), embedded)
    assert arrays["X"][:, 0].tolist() == [1, 1, 2, 2, 2]
    assert arrays["T"].tolist() == [0, 1, 1, 0, 1]
    assert arrays["is_query"].tolist() == [True, True, False, False, False]
    assert arrays["is_gallery"].tolist() == [False, False, True, True, True]


def test_vid_table_has_one_column_per_list_in_percent():
    result = {"run": "vid-run", "dataset": "vid", "checkpoint": "c/best.pt", "epoch": 7, "mid_epoch_batch": None,
              "best_epoch": 7, "selection": "R@1", "K": 4, "K_final": 4, "nmi_runs": 10}  # fmt: skip
    for prefix, base in (("", 0.5), ("small/", 0.25), ("medium/", 0.125)):
        values = {"R@1": base, "R@5": 2 * base, "NMI": base, "NMI_std": 0.01, "MAP@R": base, "mARP": base}
        result.update({prefix + key: value for key, value in values.items()})
        result.update({prefix + "n_queries": 100, prefix + "n_queries_R0": 0})
    lines = format_run_table(result, ("", "small/", "medium/")).splitlines()
    assert lines[0] == "vid-run" and "test-set R@1" in lines[2] and "K_final 4" in lines[2]
    assert lines[3].split() == ["large", "small", "medium"]
    assert lines[4].split() == ["R@1", "50.00", "25.00", "12.50"]
    assert lines[5].split() == ["R@5", "100.00", "50.00", "25.00"]
    assert lines[6].split() == ["NMI", "50.00", "±", "1.00", "25.00", "±", "1.00", "12.50", "±", "1.00"]
