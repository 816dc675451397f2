import json

import pytest

from lib.runs import RunFolder, epoch_tag, read_epoch_records


def test_epoch_tag_pads_to_four_characters():
    assert epoch_tag(9) == "0009"
    assert epoch_tag(-1) == "-001"
    assert epoch_tag(12345) == "12345"


def test_status_keys_and_transitions(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.create()
    run.set_status("running", nb_epochs=5, started=True)
    status = json.loads((run.path / "status.json").read_text())
    assert status["state"] == "running" and status["ended"] is None and status["last_epoch"] is None
    run.set_status("running", last_epoch=-1)
    run.set_status("finished", last_epoch=4)
    status = json.loads((run.path / "status.json").read_text())
    assert status["state"] == "finished" and status["last_epoch"] == 4 and status["nb_epochs"] == 5
    assert status["ended"] is not None
    assert status["started"][-6] in "+-"  # ISO 8601 with a time-zone offset


def test_reconcile_moves_later_lines_aside_and_restores_missing_line(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.create()
    for epoch in (-1, 0, 1, 2):
        run.append_epoch({"epoch": epoch, "R@1": 0.1 * epoch})
    (run.recluster_dir / "e0002.npz").write_bytes(b"x")
    (run.recluster_dir / "e0000.npz").write_bytes(b"x")
    moved = run.reconcile_records(0, {"epoch": 0, "R@1": 0.0}, reclustered_epoch=0)
    assert [r["epoch"] for r in run.epoch_records()] == [-1, 0]
    assert any("after-e0000" in p.name for p in moved)
    assert (run.recluster_dir / "e0000.npz").exists() and not (run.recluster_dir / "e0002.npz").exists()
    side = [p for p in moved if "epochs.jsonl" in p.name][0]
    assert [json.loads(line)["epoch"] for line in side.read_text().splitlines()] == [1, 2]


def test_reconcile_for_a_mid_epoch_checkpoint_keeps_that_epochs_recluster(tmp_path):
    """A checkpoint in the middle of epoch 2 holds epoch 2's recluster, which resuming does not redo."""
    run = RunFolder(tmp_path / "run")
    run.create()
    for epoch in (-1, 0, 1):
        run.append_epoch({"epoch": epoch})
    for epoch in (1, 2, 3):
        (run.recluster_dir / f"e{epoch:04d}.npz").write_bytes(b"x")
    run.reconcile_records(1, None, reclustered_epoch=2)
    assert sorted(path.name for path in run.recluster_dir.glob("e*.npz")) == ["e0001.npz", "e0002.npz"]
    assert [r["epoch"] for r in run.epoch_records()] == [-1, 0, 1]


@pytest.mark.parametrize(
    ("status", "trained", "repaired"),
    [
        ({"state": "interrupted", "nb_epochs": 3, "last_epoch": 2}, 3, True),
        ({"state": "running", "nb_epochs": 3, "last_epoch": 2}, 3, True),
        ({"state": "interrupted", "nb_epochs": 10, "last_epoch": 4}, 5, False),  # a shorter --nb-epochs now
        ({"state": "finished", "nb_epochs": 3, "last_epoch": 2}, 3, False),
        (None, 3, False),
    ],
)
def test_finish_if_complete_only_when_every_planned_epoch_was_trained(tmp_path, status, trained, repaired):
    run = RunFolder(tmp_path / "run")
    run.create()
    if status is not None:
        (run.path / "status.json").write_text(json.dumps({**status, "message": "received SIGTERM"}))
    assert run.finish_if_complete(trained) is repaired
    after = json.loads((run.path / "status.json").read_text()) if status is not None else None
    if repaired:
        assert after["state"] == "finished" and after["last_epoch"] == trained - 1 and after["message"] is None
    elif status is not None:
        assert after["state"] == status["state"]


def test_reconcile_appends_line_missing_after_a_kill(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.create()
    run.append_epoch({"epoch": -1})
    run.reconcile_records(0, {"epoch": 0, "R@1": 0.5}, reclustered_epoch=0)
    assert [r["epoch"] for r in run.epoch_records()] == [-1, 0]


def test_damaged_lines_are_reported_not_raised(tmp_path):
    (tmp_path / "epochs.jsonl").write_text('{"epoch": -1}\n{"epoch": 0, "R@1": \n[1, 2]\n')
    records, notes = read_epoch_records(tmp_path)
    assert [r["epoch"] for r in records] == [-1]
    assert len(notes) == 2 and "line 2" in notes[0]
