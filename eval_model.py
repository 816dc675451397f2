"""Evaluate trained runs, or retrieval embeddings computed anywhere (METHOD.md §8.4).

Run folders:

    python eval_model.py PATH [--checkpoint best|last|FILE] [--nmi-runs 10] [--backend faiss] [--json]
                              [--save-embeddings FILE.npz] [--dataset-dir DIR] [--num-workers N] [--eval-batch-size N]
    python eval_model.py log/margin_loss_resnet50_masks/sop-2-e512-K32-s4-3fa9c2d1
    python eval_model.py log/ --checkpoint last --nmi-runs 3 --json
    python eval_model.py RUN --checkpoint RUN/checkpoints/ep0040.pt --dataset-dir /data --save-embeddings sop.npz

PATH is a run folder (it holds config.json and checkpoints/) or any folder above run folders, which are found
recursively; any path form works. Each run's model is rebuilt from its config.json with the mask count of the
checkpoint, the checkpoint is loaded strictly, and the full protocol of METHOD.md §8.3 is evaluated (VehicleID:
small, medium and large; a validation split too if the run has one), with NMI averaged over --nmi-runs k-means
seeds. --checkpoint is ``best`` (default; chosen on the test set unless the run used --val-ratio), ``last``, a
file name inside the run's checkpoints/ (``ep0040``), or a path to a checkpoint file. The results are printed as
one table per run and written next to the checkpoint (``checkpoints/best.eval.json``). --dataset-dir,
--num-workers and --eval-batch-size replace the recorded values (data often moves between machines). A folder
named only by a run's records is never written to: glyphs are cached only in a folder given with --dataset-dir.
The model runs on the first visible GPU if there is one (pick it with CUDA_VISIBLE_DEVICES), else on the CPU.

--json prints the results instead of tables: a single JSON object when PATH holds one run, a JSON list of
objects (in path order) when it holds several. A run that cannot be evaluated (missing or corrupt checkpoint,
missing config, dataset not found, weights that do not fit) gets one line on stderr with the reason, and an
object ``{"run", "path", "error"}`` in the --json output; the other runs still proceed. Exit status: 2 if any
run failed, else 0.

--save-embeddings FILE.npz writes the evaluated embeddings of the main set in the format of --embeddings below
(In-Shop: query and gallery with is_query/is_gallery; VehicleID: the large list), so that they can be
re-evaluated; with several runs, the run name is added: FILE-<run name>.npz.

Embeddings:

    python eval_model.py --embeddings FILE.npz [--nmi-runs 10] [--json] [--backend faiss]

FILE.npz holds ``X`` (N x D float embeddings) and ``T`` (N labels, integers or strings), and optionally
boolean ``is_query`` and ``is_gallery`` (both, disjoint) for query -> gallery retrieval as in In-Shop.
Without them every point is a query against all the others. Prints R@1, 2, 4, 8, 10, 100 (those with
k <= gallery size), NMI (mean and std over --nmi-runs k-means seeds), MAP@R and mARP; with --json, one JSON
object with fractions in [0, 1]. A malformed file gets one message and exit status 2.
"""

import argparse
import dataclasses
import json
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dataset.base import Split
from experiment.build import Embedder, build_data, build_model
from experiment.config import Config, config_from_dict
from experiment.protocol import EvalTask, run_evaluation
from lib.atomic import atomic_write, atomic_write_json
from lib.checkpoint import load_checkpoint
from lib.dist import DistContext
from lib.errors import CheckpointError, ConfigError, DatasetError, UserFacingError
from lib.knn import BACKENDS
from lib.recall_ks import RECALL_KS
from lib.run_folders import find_run_folders
from lib.runs import json_safe
from metriclearning.evaluation import evaluate_retrieval

EXIT_BAD_INPUT = 2
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
SUMMARY_KEYS = ("NMI", "MAP@R", "mARP")
# What numpy and zipfile raise on damaged or crafted archives: bad headers, truncated or corrupt (compressed)
# members, CRC mismatches, encrypted members or unknown compression methods (RuntimeError, NotImplementedError),
# and headers that declare arrays too large to allocate.
_ZIP_SIGNATURE, _NPY_SIGNATURE = b"PK\x03\x04", b"\x93NUMPY"  # how np.load tells .npz from .npy files
_UNREADABLE_NPZ = (OSError, ValueError, EOFError, MemoryError, RuntimeError, zipfile.BadZipFile, zlib.error)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("path", nargs="?", type=Path, help="a run folder or a folder of run folders")
    parser.add_argument("--embeddings", type=Path, metavar="FILE.npz", help="evaluate embeddings from this file")
    parser.add_argument(
        "--checkpoint",
        default="best",
        metavar="best|last|FILE",
        help="which checkpoint of each run: best (default), last, a name in checkpoints/, or a checkpoint file",
    )
    parser.add_argument(
        "--nmi-runs",
        type=_positive_int,
        default=10,
        help="k-means seeds averaged for NMI; lower it for large sets, where each run is slow",
    )
    parser.add_argument(
        "--backend",
        choices=[b for b in BACKENDS if b != "faiss-flat"],
        default="faiss",
        help="kNN and k-means implementation (METHOD.md §8.6; default: faiss). faiss and auto search neighbours "
        "with the fastest exact engine of the device (on CPU, blocked sgemm; the table names it); faiss-gpu needs "
        "a GPU build of faiss",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--save-embeddings", type=Path, metavar="FILE.npz", help="also write the evaluated embeddings (run folders)"
    )
    parser.add_argument("--dataset-dir", help="where the dataset is now, if it moved since training")
    parser.add_argument("--num-workers", type=_non_negative_int, help="data loader workers (default: as recorded)")
    parser.add_argument("--eval-batch-size", type=_positive_int, help="images per forward (default: as recorded)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.path is None) == (args.embeddings is None):
        parser.error("give either a run folder PATH or --embeddings FILE.npz")
    try:
        if args.path is not None:
            return _evaluate_runs(args)
        return _evaluate_embeddings(args)
    except UserFacingError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


# ---------------------------------------------------------------------------------------------- run folders
@dataclass(frozen=True)
class EvalOptions:
    """What the command line changes about every run's evaluation."""

    checkpoint: str = "best"
    nmi_runs: int = 10
    backend: str = "faiss"
    dataset_dir: str | None = None
    num_workers: int | None = None
    eval_batch_size: int | None = None


@dataclass(frozen=True)
class RunEvaluation:
    """One evaluated run: its description and metrics (``result``) and the main set's embeddings."""

    result: dict
    prefixes: tuple[str, ...]
    embeddings: dict[str, np.ndarray]


def find_runs(root: Path) -> list[Path]:
    """``root`` if it is a run folder, else every run folder below it (sorted, links followed).

    A folder with checkpoints/ but no config.json counts, so that its missing config is reported.
    """
    if not root.is_dir():
        raise UserFacingError(f"{root} is not a folder; give a run folder or a folder of run folders")
    found = find_run_folders(root, lambda subfolders, files: CONFIG_FILE in files or CHECKPOINT_DIR in subfolders)
    if not found:
        raise UserFacingError(f"no run folder (a folder holding {CONFIG_FILE} and {CHECKPOINT_DIR}/) under {root}")
    return found


def _evaluate_runs(args: argparse.Namespace) -> int:
    runs = find_runs(args.path)
    options = EvalOptions(
        checkpoint=args.checkpoint,
        nmi_runs=args.nmi_runs,
        backend=args.backend,
        dataset_dir=args.dataset_dir,
        num_workers=args.num_workers,
        eval_batch_size=args.eval_batch_size,
    )
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    outputs, failed = [], 0
    for run_dir in runs:
        name = run_dir.resolve().name
        try:
            evaluation = evaluate_run(run_dir, options, device)
            _write_results(evaluation.result)
            if args.save_embeddings is not None:
                target = args.save_embeddings
                if len(runs) > 1:
                    target = target.with_name(f"{target.stem}-{name}{target.suffix}")
                save_embeddings(target, evaluation.embeddings)
                print(f"{name}: embeddings written to {target}", file=sys.stderr)
        except Exception as error:  # noqa: BLE001 - one run's failure, whatever it is, must not stop the others
            failed += 1
            message = " ".join(str(error).split())
            if not isinstance(error, UserFacingError):
                message = f"unexpected {type(error).__name__}: {message}"
            print(f"{name}: cannot be evaluated: {message}", file=sys.stderr)
            outputs.append({"run": name, "path": str(run_dir), "error": message})
            continue
        outputs.append(evaluation.result)
        if not args.json:
            print(format_run_table(evaluation.result, evaluation.prefixes), flush=True)
    if args.json:
        print(json.dumps(json_safe(outputs if len(runs) > 1 else outputs[0]), indent=2))
    return EXIT_BAD_INPUT if failed else 0


def evaluate_run(run_dir: Path, options: EvalOptions, device: torch.device) -> RunEvaluation:
    """Rebuild the run's model from its config and checkpoint and evaluate the full protocol (METHOD.md §8.3)."""
    record = _read_config(run_dir)
    config = _with_overrides(config_from_dict(record), options)
    _warn_if_edited(run_dir, config, record)
    checkpoint_path = resolve_checkpoint(run_dir, options.checkpoint)
    state = load_checkpoint(checkpoint_path, hint=" Choose another with --checkpoint (best, last or a file).")
    n_masks = _check_state(state, checkpoint_path, record)
    model = build_model(
        dataclasses.replace(config, pretrained=False, pretrained_weights=None), n_masks=n_masks, device=device
    )
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"the weights of {checkpoint_path} do not fit the model described by {run_dir / CONFIG_FILE} "
            f"({' '.join(str(error).split())[:300]})"
        ) from error
    data = _load_data(config, glyphs_cache=options.dataset_dir is not None)
    for warning in data.warnings:
        print(f"{run_dir.resolve().name}: warning: {warning}", file=sys.stderr)
    embedder = Embedder(model, config, device, DistContext())
    embedded: dict[int, np.ndarray] = {}

    def embed(split: Split) -> np.ndarray:
        embedded[id(split)] = embedder(split)
        return embedded[id(split)]

    metrics = run_evaluation(
        data.eval_tasks,
        embed,
        dataset_name=config.dataset,
        with_nmi=True,
        nmi_runs=options.nmi_runs,
        backend=options.backend,
        device=device,
    )
    result = {
        **_describe(run_dir, checkpoint_path, state, config),
        "nmi_runs": options.nmi_runs,
        "backend": options.backend,
        **metrics,
    }
    main_task = data.eval_tasks[0]
    return RunEvaluation(
        result=result,
        prefixes=tuple(task.prefix for task in data.eval_tasks),
        embeddings=main_set_embeddings(main_task, embedded),
    )


def resolve_checkpoint(run_dir: Path, choice: str) -> Path:
    """``best``/``last``/a name in checkpoints/ (with or without .pt), or an existing file path."""
    checkpoints = run_dir / CHECKPOINT_DIR
    if choice in ("best", "last"):
        return checkpoints / f"{choice}.pt"
    given = Path(choice)
    if given.is_file():
        return given
    for candidate in (checkpoints / choice, checkpoints / f"{choice}.pt"):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"--checkpoint {choice}: no such file, neither as a path nor in {checkpoints}; "
        "give best, last, a file name in checkpoints/ (e.g. ep0010) or a path to a checkpoint."
    )


def _read_config(run_dir: Path) -> dict:
    path = run_dir / CONFIG_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing; the run folder is incomplete (did training start?).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} cannot be read as JSON ({error}); the record is damaged.") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{path} does not hold a JSON object; the record is damaged.")
    return record


def _warn_if_edited(run_dir: Path, config: Config, record: dict) -> None:
    """A warning when config.json's settings no longer hash to the hash training recorded in it: the model is
    rebuilt from the file as it is, which may not be how it was trained."""
    recorded = _recorded_hash(record)
    try:
        current = config.hash()
    except ConfigError:  # a hashed file (--split-file, --pretrained-weights) moved: nothing to compare
        return
    if recorded is not None and current != recorded:
        print(
            f"{run_dir.resolve().name}: warning: the settings in {CONFIG_FILE} hash to {current}, not to the "
            f"{recorded} recorded at training: the file was edited (or written by another version of this code); "
            "the model is rebuilt from it as it is now.",
            file=sys.stderr,
        )


def _recorded_hash(record: dict) -> str | None:
    """The config hash training wrote into config.json (``derived.config_hash``), if the record has one."""
    derived = record.get("derived")
    return derived.get("config_hash") if isinstance(derived, dict) else None


def _with_overrides(config: Config, options: EvalOptions) -> Config:
    changes = {
        "dataset_dir": options.dataset_dir,
        "num_workers": options.num_workers,
        "eval_batch_size": options.eval_batch_size,
    }
    return dataclasses.replace(config, **{key: value for key, value in changes.items() if value is not None})


def _check_state(state: dict, path: Path, record: dict) -> int:
    """The checkpoint's mask count, after checking that it holds weights and belongs to this run's config."""
    try:
        n_masks = state["clusters"]["k"]
        weights = state["model"]
    except (KeyError, TypeError):
        raise CheckpointError(
            f"{path} lacks the model weights or the cluster state; it is not a run checkpoint."
        ) from None
    if not isinstance(weights, dict) or not isinstance(n_masks, int) or n_masks < 1:
        raise CheckpointError(f"{path} holds malformed weights or mask count; it is not a run checkpoint.")
    expected = _recorded_hash(record)
    found = state.get("config_hash")
    if expected is not None and found is not None and found != expected:
        raise CheckpointError(
            f"{path} belongs to another config (hash {found}) than this run's config.json ({expected}); "
            "evaluate it from the run folder it was written in."
        )
    return n_masks


def _load_data(config: Config, *, glyphs_cache: bool):
    """``glyphs_cache``: whether glyphs may be cached in ``dataset_dir``; a recorded folder is only ever read."""
    try:
        return build_data(config, all_vid_lists=True, glyphs_cache=glyphs_cache)
    except DatasetError as error:
        raise DatasetError(f"{error} (if the data moved, pass --dataset-dir DIR)") from error


def _describe(run_dir: Path, checkpoint_path: Path, state: dict, config: Config) -> dict:
    mid = state.get("mid_epoch")
    flags = state.get("flags") if isinstance(state.get("flags"), dict) else {}
    return {
        "run": run_dir.resolve().name,
        "path": str(run_dir),
        "dataset": config.dataset,
        "checkpoint": str(checkpoint_path),
        "epoch": state.get("epoch"),
        "mid_epoch_batch": mid.get("progress", {}).get("next_batch", "?") if isinstance(mid, dict) else None,
        "best_epoch": flags.get("best_epoch"),
        "selection": "val/R@1" if config.val_ratio > 0 else "R@1",  # plain R@1: selected on the test set
        "K": state["clusters"]["k"],
        "K_final": config.nb_clusters,
    }


def main_set_embeddings(task: EvalTask, embedded: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """The main set in the --embeddings format: X, T, and is_query/is_gallery for query -> gallery."""
    queries = embedded[id(task.queries)]
    if task.gallery is None:
        return {"X": queries, "T": task.queries.labels}
    gallery = embedded[id(task.gallery)]
    is_query = np.arange(len(queries) + len(gallery)) < len(queries)
    return {
        "X": np.concatenate([queries, gallery]),
        "T": np.concatenate([task.queries.labels, task.gallery.labels]),
        "is_query": is_query,
        "is_gallery": ~is_query,
    }


def save_embeddings(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        atomic_write(path, lambda handle: np.savez(handle, **arrays))
    except OSError as error:
        raise UserFacingError(f"cannot write embeddings to {path} ({error}); choose a writable path") from error


def _write_results(result: dict) -> None:
    """``<checkpoint>.eval.json`` next to the checkpoint; an unwritable folder only costs a warning."""
    checkpoint = Path(result["checkpoint"])
    target = checkpoint.with_name(f"{checkpoint.stem}.eval.json")
    try:
        atomic_write_json(target, json_safe(result))
    except OSError as error:
        print(f"{result['run']}: warning: cannot write {target} ({error})", file=sys.stderr)


def format_run_table(result: dict, prefixes: tuple[str, ...]) -> str:
    """One run: what was evaluated, then one column per evaluated set; percentages with 2 decimals."""
    epoch = result["epoch"]
    if result["mid_epoch_batch"] is not None:
        epoch = f"{epoch} (mid-epoch, before batch {result['mid_epoch_batch']})"
    lines = [
        f"{result['run']}",
        f"  checkpoint {result['checkpoint']}, epoch {epoch}",
        f"  best epoch {result['best_epoch']} (selected by {_selection(result['selection'])}), "
        f"K_final {result['K_final']} (K {result['K']}), NMI over {result['nmi_runs']} k-means run(s)",
    ]
    names = [_column_name(prefix, result["dataset"]) for prefix in prefixes]
    lines.append("  " + " " * 8 + "".join(f"{name:>16}" for name in names))
    recall_keys = [key for key in result if key.startswith("R@")]
    for key in (*recall_keys, *SUMMARY_KEYS):
        cells = [_cell(result, prefix, key) for prefix in prefixes]
        lines.append(f"  {key:<8}" + "".join(f"{cell:>16}" for cell in cells))
    queries = [f"{result.get(p + 'n_queries')} ({result.get(p + 'n_queries_R0')} R=0)" for p in prefixes]
    lines.append(f"  {'queries':<8}" + "".join(f"{cell:>16}" for cell in queries))
    methods = dict.fromkeys(result[p + "knn_method"] for p in prefixes if result.get(p + "knn_method"))
    lines.append(f"  kNN: {'; '.join(methods) or 'unknown'}")
    return "\n".join(lines)


def _selection(key: str) -> str:
    return "test-set R@1" if key == "R@1" else key


def _column_name(prefix: str, dataset: str) -> str:
    if prefix == "":
        return {"vid": "large", "inshop": "query->gallery"}.get(dataset, "eval")
    return prefix.rstrip("/")


def _cell(result: dict, prefix: str, key: str) -> str:
    value = result.get(prefix + key)
    if value is None:
        return "-"
    if key == "NMI":
        return f"{100 * value:.2f} ± {100 * result[prefix + 'NMI_std']:.2f}"
    return f"{100 * value:.2f}"


# ---------------------------------------------------------------------------------------------- embeddings
def _evaluate_embeddings(args: argparse.Namespace) -> int:
    data = load_embeddings(args.embeddings)
    metrics = evaluate_retrieval(
        data["X"],
        data["T"],
        recall_ks=RECALL_KS["embeddings"],
        with_nmi=True,
        nmi_runs=args.nmi_runs,
        query_mask=data.get("is_query"),
        gallery_mask=data.get("is_gallery"),
        backend=args.backend,
    )
    if args.json:
        print(json.dumps(metrics))
    else:
        print(format_table(metrics, args.embeddings.name))
    return 0


def load_embeddings(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an embeddings file, checked; every problem is a DatasetError naming the fix."""
    try:
        with open(path, "rb") as file:
            signature = file.read(len(_NPY_SIGNATURE))
        if not signature.startswith(_ZIP_SIGNATURE) and signature != _NPY_SIGNATURE:
            raise DatasetError(f"{path} is not an .npz archive (no zip signature); save X and T with numpy.savez")
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError as error:
        raise DatasetError(f"{path}: no such file") from error
    except _UNREADABLE_NPZ as error:
        raise DatasetError(f"{path} is not a readable .npz file ({error}); save it with numpy.savez") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path} holds a single array, not an .npz archive; save X and T with numpy.savez")
    with archive:
        missing = [key for key in ("X", "T") if key not in archive.files]
        if missing:
            raise DatasetError(f"{path} lacks {' and '.join(missing)}; it needs X (N x D embeddings) and T (N labels)")
        try:
            data = {key: archive[key] for key in ("X", "T", "is_query", "is_gallery") if key in archive.files}
        except _UNREADABLE_NPZ as error:  # object arrays need pickle; truncated or corrupt data
            raise DatasetError(f"{path}: cannot read its arrays ({error}); store plain numeric arrays") from error
    _check_arrays(data, path)
    return data


def _check_arrays(data: dict[str, np.ndarray], path: Path) -> None:
    x, labels = data["X"], data["T"]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DatasetError(f"{path}: X must be a non-empty N x D matrix, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise DatasetError(f"{path}: X must hold real numbers, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise DatasetError(f"{path}: X contains NaN or infinite values; drop or fix those rows")
    with np.errstate(over="ignore", invalid="ignore"):  # distances are computed in float32
        x32 = x.astype(np.float32)
        squared_norms = np.einsum("ij,ij->i", x32, x32)
    if not np.isfinite(squared_norms).all():
        raise DatasetError(f"{path}: X holds values too large for float32 distances; rescale or L2-normalise the rows")
    if labels.shape != (x.shape[0],):
        raise DatasetError(f"{path}: T must hold one label per row of X ({x.shape[0]}), got shape {labels.shape}")
    if labels.dtype.kind not in "iuUS":
        raise DatasetError(f"{path}: T must hold integer or string labels, got dtype {labels.dtype}")
    if ("is_query" in data) != ("is_gallery" in data):
        raise DatasetError(f"{path}: give both is_query and is_gallery, or neither (self-retrieval)")
    points = np.ones(len(labels), dtype=bool)
    if "is_query" in data:
        for key in ("is_query", "is_gallery"):
            if data[key].dtype != np.bool_ or data[key].shape != labels.shape:
                raise DatasetError(f"{path}: {key} must be a boolean array of shape {labels.shape}")
            if not data[key].any():
                raise DatasetError(f"{path}: {key} selects no point")
        if (data["is_query"] & data["is_gallery"]).any():
            raise DatasetError(f"{path}: some points are both query and gallery; the two sets must be disjoint")
        points = data["is_query"] | data["is_gallery"]
    elif len(labels) < 2:
        raise DatasetError(f"{path}: self-retrieval needs at least 2 points")
    if len(np.unique(labels[points])) < 2:
        raise DatasetError(f"{path}: all evaluated points have the same label; retrieval needs at least 2 classes")
    if "is_query" in data:
        relevant = np.isin(labels[data["is_query"]], labels[data["is_gallery"]]).any()
    else:
        relevant = np.unique(labels, return_counts=True)[1].max() >= 2
    if not relevant:
        raise DatasetError(
            f"{path}: no query has another item of its label in the gallery, so every retrieval metric would be 0; "
            "check T" + (" and is_query / is_gallery" if "is_query" in data else " (every label occurs once)")
        )


def format_table(metrics: dict, title: str) -> str:
    """Percentages with 2 decimals, as in the README's tables."""
    lines = [title]
    lines += [f"  {key:<6} {100 * value:6.2f}" for key, value in metrics.items() if key.startswith("R@")]
    lines.append(f"  {'NMI':<6} {100 * metrics['NMI']:6.2f} ± {100 * metrics['NMI_std']:.2f}")
    lines += [f"  {key:<6} {100 * metrics[key]:6.2f}" for key in ("MAP@R", "mARP")]
    lines.append(f"  queries {metrics['n_queries']} ({metrics['n_queries_R0']} without a relevant gallery item)")
    lines.append(f"  kNN: {metrics['knn_method']}")
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
