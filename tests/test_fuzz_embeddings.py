"""Property-based fuzzing of ``eval_model.py --embeddings FILE.npz`` (issue 7).

Whatever the file holds (any keys, dtypes and shapes, NaN and inf, one class or all-distinct labels, object
arrays whose unpickling would run code, random bytes, truncated or corrupted archives), the command either
succeeds with the documented metrics or exits with status 2 and one readable line on stderr; it never unpickles.
"""

import io
import json
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from eval_model import main

# capsys is function-scoped, but every example reads (and so empties) it before the next one starts.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
RECALL_KS = (1, 2, 4, 8, 10, 100)
FRACTION_KEYS = ("NMI", "NMI_std", "MAP@R", "mARP")
REQUIRED_KEYS = {"R@1", *FRACTION_KEYS, "n_queries", "n_queries_R0", "knn_method"}
MAX_N, MAX_D = 40, 8
ARRAY_KEYS = ("X", "T", "is_query", "is_gallery")
HUGE_X32 = np.array([[3e38, 0.0], [-3e38, 0.0], [0.0, 1.0]], dtype=np.float32)  # finite; squares overflow
HUGE_X64 = np.array([[1e300, 0.0], [-1e300, 0.0], [0.0, 1.0]])  # finite, but not in float32
MARKER = {"path": None}  # where a detonation leaves its mark; set afresh for every example


def detonate() -> None:
    Path(MARKER["path"]).touch()


class PickleBomb:
    """Unpickling it calls ``detonate``, which creates the marker file: proof that a loader ran pickled code."""

    def __reduce__(self):
        return detonate, ()


# ---------------------------------------------------------------------------------------------- strategies
SIZES = st.integers(0, MAX_N)
DIMS = st.integers(0, MAX_D)
SHAPES = st.one_of(
    st.just(()),
    st.tuples(SIZES),
    st.tuples(SIZES, DIMS),
    st.tuples(SIZES, DIMS, st.integers(0, 3)),
)
PLAIN_DTYPES = st.sampled_from(
    ["float16", "float32", "float64", "int8", "int64", "uint8", "bool", "complex64", "<U3", "|S3", "<M8[D]"]
)


@st.composite
def object_arrays(draw, shape=SHAPES) -> np.ndarray:
    """Object arrays of plain values or of pickle bombs; np.save stores them as a pickle."""
    shape = draw(shape)
    values = st.one_of(st.integers(-3, 3), st.text(max_size=3), st.builds(PickleBomb))
    array = np.empty(shape, dtype=object)
    for index in np.ndindex(*shape):
        array[index] = draw(values)
    return array


def any_array(shape=SHAPES) -> st.SearchStrategy[np.ndarray]:
    """Any dtype (extreme values, NaN and inf included) and any shape up to 3-d."""
    return st.one_of(PLAIN_DTYPES.flatmap(lambda dtype: hnp.arrays(dtype, shape)), object_arrays(shape))


@st.composite
def plausible_arrays(draw) -> dict[str, np.ndarray]:
    """X and T of one N, few or many classes, sometimes query/gallery masks: mostly valid, often at an edge."""
    n, d = draw(st.integers(1, MAX_N)), draw(st.integers(1, MAX_D))
    finite = st.floats(-10, 10, width=16)  # representable in every float dtype
    x_dtype = draw(st.sampled_from(["float16", "float32", "float64", "int8", "uint8"]))
    extreme = draw(st.integers(0, 3)) == 0  # NaN, inf and the dtype's extremes in a quarter of the files
    x_elements = None if extreme or not x_dtype.startswith("float") else finite
    x = draw(hnp.arrays(x_dtype, (n, d), elements=x_elements))
    classes = draw(st.sampled_from(["one", "distinct", "few", "few", "few"]))
    if classes == "one":
        labels = np.zeros(n, dtype=np.int64)
    elif classes == "distinct":
        labels = np.arange(n)
    else:
        labels = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    labels = labels.astype(draw(st.sampled_from(["int64", "int8", "uint16", "<U4", "|S4"])))
    arrays = {"X": x, "T": labels}
    if draw(st.booleans()):
        arrays["is_query"] = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
        overlap = draw(st.integers(0, 3)) == 0
        arrays["is_gallery"] = arrays["is_query"].copy() if overlap else ~arrays["is_query"]
    return arrays


@st.composite
def archives(draw) -> dict[str, np.ndarray]:
    """A plausible archive with a few of its arrays replaced, removed or joined by arrays under other names."""
    arrays = draw(plausible_arrays())
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        key = draw(st.one_of(st.sampled_from(ARRAY_KEYS), st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True)))
        action = draw(st.sampled_from(["replace", "remove", "reshape"]))
        if action == "remove":
            arrays.pop(key, None)
        elif action == "reshape" and key in arrays:
            arrays[key] = arrays[key].reshape(-1) if arrays[key].ndim != 1 else arrays[key][:, None]
        else:
            arrays[key] = draw(any_array())
    return arrays


def archive_bytes(arrays: dict[str, np.ndarray], compressed: bool) -> bytes:
    """An .npz archive as np.savez(_compressed) writes it, object arrays pickled (allow_pickle=True)."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, array, allow_pickle=True)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def corrupt_deflate_archive() -> bytes:
    """A compressed archive whose X member's deflate stream is broken right after its name: zlib.error."""
    valid = archive_bytes({"X": np.zeros((6, 3), np.float32), "T": np.arange(6)}, compressed=True)
    position = valid.index(b"X.npy") + len(b"X.npy")
    return valid[:position] + b"\xff" + valid[position + 1 :]


def with_central_field(offset: int, value: bytes) -> bytes:
    """A valid archive whose first central directory entry has ``value`` at ``offset`` (6: version, 8: flags,
    10: compression method)."""
    valid = archive_bytes({"X": np.zeros((6, 3), np.float32), "T": np.arange(6)}, compressed=False)
    at = valid.index(b"PK\x01\x02") + offset
    return valid[:at] + value + valid[at + len(value) :]


def header_only_archive(shape: tuple[int, ...]) -> bytes:
    """An archive whose X.npy declares ``shape`` but holds 16 bytes: a huge shape fails to allocate."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": shape})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("X.npy", member.getvalue() + bytes(16))
        archive.writestr("T.npy", npy_bytes(np.arange(shape[0] if shape[0] < 100 else 2)))
    return buffer.getvalue()


@st.composite
def damaged_files(draw) -> bytes:
    """Random bytes (with and without the zip or .npy magic), pickles, single arrays, and damaged archives."""
    kind = draw(st.sampled_from(["bytes", "pickle", "npy", "truncated", "flipped"]))
    if kind == "bytes":
        return draw(st.sampled_from([b"", b"PK\x03\x04", b"\x93NUMPY", b"PK\x05\x06"])) + draw(st.binary(max_size=300))
    if kind == "pickle":
        return pickle.dumps(draw(object_arrays()))
    if kind == "npy":
        return npy_bytes(draw(any_array()))
    valid = archive_bytes(draw(plausible_arrays()), compressed=draw(st.booleans()))
    position = draw(st.integers(0, len(valid) - 1))
    if kind == "truncated":
        return valid[:position]
    return valid[:position] + bytes([valid[position] ^ draw(st.integers(1, 255))]) + valid[position + 1 :]


# ---------------------------------------------------------------------------------------------- the property
def expected_counts(arrays: dict[str, np.ndarray]) -> tuple[int, int]:
    """(queries, gallery size) of a file that was accepted."""
    if "is_query" in arrays:
        return int(arrays["is_query"].sum()), int(arrays["is_gallery"].sum())
    return len(arrays["T"]), len(arrays["T"]) - 1


def reject_constant(name: str):
    raise AssertionError(f"--json printed {name}, which is not JSON")


def check_outcome(code: int, out: str, err: str, as_json: bool, arrays: dict[str, np.ndarray] | None) -> None:
    """Metrics on stdout and exit 0, or one ``error:`` line on stderr and exit 2; never a traceback."""
    assert "Traceback" not in err
    if code == 2:
        assert out == ""
        assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
        return
    assert code == 0, (code, err)
    assert arrays is not None, "a damaged file was accepted"
    n_queries, gallery_size = expected_counts(arrays)
    if not as_json:
        assert "R@1" in out and "MAP@R" in out and f"queries {n_queries} " in out
        return
    result = json.loads(out, parse_constant=reject_constant)
    assert isinstance(result, dict)
    recall_keys = {f"R@{k}" for k in RECALL_KS if k <= gallery_size}
    assert set(result) == REQUIRED_KEYS | recall_keys
    for key in (*recall_keys, *FRACTION_KEYS):
        assert result[key] is None or (isinstance(result[key], float) and 0 <= result[key] <= 1), (key, result[key])
    assert result["n_queries"] == n_queries and 0 <= result["n_queries_R0"] <= n_queries
    assert isinstance(result["knn_method"], str)


def evaluate_file(capsys, contents: bytes, as_json: bool) -> tuple[int, str, str, bool]:
    """Write ``contents`` into a fresh folder and run the command on it; also says whether a pickle detonated."""
    with tempfile.TemporaryDirectory() as folder:
        MARKER["path"] = Path(folder) / "pickle-was-executed"
        path = Path(folder) / "embeddings.npz"
        path.write_bytes(contents)
        code = main(["--embeddings", str(path), "--nmi-runs", "1", *(["--json"] if as_json else [])])
        captured = capsys.readouterr()
        event(f"exit {code}: {' '.join(captured.err.replace(str(path), 'FILE').split()[:5])}")  # see the statistics
        detonated = MARKER["path"].exists()
    return code, captured.out, captured.err, detonated


# ---------------------------------------------------------------------------------------------- tests
def test_the_pickle_bomb_goes_off_when_pickle_is_allowed(tmp_path):
    """Control: without this, "the marker never appears" would prove nothing."""
    MARKER["path"] = tmp_path / "pickle-was-executed"
    path = tmp_path / "bomb.npz"
    path.write_bytes(archive_bytes({"X": np.ones((2, 2)), "T": np.array([PickleBomb()], dtype=object)}, False))
    with np.load(path, allow_pickle=True) as archive:
        archive["T"]
    assert MARKER["path"].exists()


@FUZZ
@given(arrays=archives(), compressed=st.booleans(), as_json=st.booleans())
@example(arrays={"X": HUGE_X32, "T": np.array([0, 0, 1])}, compressed=False, as_json=True)
@example(arrays={"X": HUGE_X64, "T": np.array([0, 1, 1])}, compressed=False, as_json=True)
@example(arrays={"X": np.ones((3, 2)), "T": np.array([PickleBomb()] * 3, dtype=object)}, compressed=True, as_json=True)
def test_any_archive_gives_metrics_or_one_message(capsys, arrays, compressed, as_json):
    code, out, err, detonated = evaluate_file(capsys, archive_bytes(arrays, compressed), as_json)
    assert not detonated
    check_outcome(code, out, err, as_json, arrays)


@FUZZ
@given(contents=damaged_files(), as_json=st.booleans())
@example(contents=pickle.dumps(PickleBomb()), as_json=True)
@example(contents=npy_bytes(np.array([PickleBomb()], dtype=object)), as_json=False)
@example(contents=corrupt_deflate_archive(), as_json=True)
@example(contents=with_central_field(6, b"\x54\x00"), as_json=True)  # needs zip version 8.4
@example(contents=with_central_field(8, b"\x01\x00"), as_json=True)  # encrypted
@example(contents=with_central_field(10, b"\x63\x00"), as_json=True)  # unknown compression method
@example(contents=header_only_archive((2**40, 8)), as_json=True)  # 32 TiB
@example(contents=header_only_archive((6, 3)), as_json=False)  # the data ends early
def test_damaged_files_give_one_message(capsys, contents, as_json):
    code, out, err, detonated = evaluate_file(capsys, contents, as_json)
    assert not detonated
    if code == 0:  # a damage that happened to leave a valid archive: the archive's own arrays decide
        with zipfile.ZipFile(io.BytesIO(contents)) as archive:
            names = [name for name in archive.namelist() if name.endswith(".npy")]
            arrays = {name[: -len(".npy")]: np.load(archive.open(name)) for name in names}
        check_outcome(code, out, err, as_json, arrays)
    else:
        check_outcome(code, out, err, as_json, None)
