import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

from lib.checkpoint import load_checkpoint, save_checkpoint
from lib.errors import CheckpointError


def _state():
    rng = np.random.default_rng(3)
    rng.random()
    legacy = np.random.RandomState(5).get_state()
    return {
        "model": {"w": torch.arange(6.0).reshape(2, 3)},
        "epoch": 4,
        "assignment": np.array([0, 1, -1, 1], dtype=np.int32),
        "rng": rng.bit_generator.state,  # holds 128-bit Python ints
        "legacy_rng": legacy,
        "nested": [{"cursor": np.int64(7), "order": np.arange(3, dtype=np.uint32)}],
        "best": float("inf"),
    }


def test_round_trip_restores_arrays_and_generator_state(tmp_path):
    path = tmp_path / "ck.pt"
    state = _state()
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["assignment"].dtype == np.int32 and (loaded["assignment"] == state["assignment"]).all()
    assert loaded["nested"][0]["cursor"] == 7
    assert loaded["nested"][0]["order"].dtype == np.uint32
    restored = np.random.default_rng()
    restored.bit_generator.state = loaded["rng"]
    original = np.random.default_rng(3)
    original.random()
    assert restored.random() == original.random()
    legacy = np.random.RandomState()
    legacy.set_state(loaded["legacy_rng"])
    assert legacy.randint(0, 999999) == np.random.RandomState(5).randint(0, 999999)


def test_truncated_checkpoint_is_detected_with_the_file_name(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="last.pt"):
        load_checkpoint(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's note on the raw pickle
def test_pickle_that_would_execute_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "dnc-checkpoint-v1", "x": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"x": _Exploit()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def _tensor_data_offset(path) -> int:
    """Where the bytes of the checkpoint's largest record (a tensor) begin in the file: after its local header."""
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    with open(path, "rb") as handle:
        handle.seek(record.header_offset)
        header = handle.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return record.header_offset + 30 + name_length + extra_length


def test_a_flipped_bit_inside_a_tensor_is_detected(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(4096, dtype=torch.float32)}})
    data = bytearray(path.read_bytes())
    data[_tensor_data_offset(path) + 4 * 1000] ^= 0x01  # the lowest mantissa bit of w[1000]
    path.write_bytes(bytes(data))
    silently = torch.load(path, weights_only=True)  # what torch alone would hand back
    assert silently["model"]["w"][1000] != 1000
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupt.*checksum"):
        load_checkpoint(path)


def test_a_checkpoint_written_without_checksums_still_loads(tmp_path):
    config = pytest.importorskip("torch.utils.serialization").config  # torch >= 2.7 can turn CRCs off
    path = tmp_path / "last.pt"
    previous, config.save.compute_crc32 = config.save.compute_crc32, False
    try:  # set back by assignment: monkeypatch's undo deletes the entry, which this config module hides for good
        save_checkpoint(path, {"model": {"w": torch.arange(4096, dtype=torch.float32)}})
    finally:
        config.save.compute_crc32 = previous
    with zipfile.ZipFile(path) as archive:
        assert all(info.CRC == 0 for info in archive.infolist())
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(4096, dtype=torch.float32))
