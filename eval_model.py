"""Evaluate retrieval embeddings (METHOD.md §8.4).

    python eval_model.py --embeddings FILE.npz [--nmi-runs 10] [--json] [--backend faiss]

FILE.npz holds ``X`` (N x D float embeddings) and ``T`` (N labels, integers or strings), and optionally
boolean ``is_query`` and ``is_gallery`` (both, disjoint) for query -> gallery retrieval as in In-Shop.
Without them every point is a query against all the others. Prints R@1, 2, 4, 8, 10, 100 (those with
k <= gallery size), NMI (mean and std over --nmi-runs k-means seeds), MAP@R and mARP; with --json, one JSON
object with fractions in [0, 1]. A malformed file gets one message and exit status 2.

Evaluating run folders (``python eval_model.py PATH``) is not available yet.
"""

import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

from lib.errors import DatasetError, UserFacingError
from lib.knn import BACKENDS
from metriclearning.evaluation import RECALL_KS, evaluate_retrieval

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("path", nargs="?", type=Path, help="a run folder or a folder of run folders")
    parser.add_argument("--embeddings", type=Path, metavar="FILE.npz", help="evaluate embeddings from this file")
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
        help="kNN and k-means implementation (METHOD.md §8.6); faiss-gpu needs a GPU build",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.path is None) == (args.embeddings is None):
        parser.error("give either a run folder PATH or --embeddings FILE.npz")
    try:
        if args.path is not None:
            raise UserFacingError("evaluating run folders is not available yet; use --embeddings FILE.npz")
        return _evaluate_embeddings(args)
    except UserFacingError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


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
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError as error:
        raise DatasetError(f"{path}: no such file") from error
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetError(f"{path} is not a readable .npz file ({error}); save it with numpy.savez") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path} holds a single array, not an .npz archive; save X and T with numpy.savez")
    with archive:
        missing = [key for key in ("X", "T") if key not in archive.files]
        if missing:
            raise DatasetError(f"{path} lacks {' and '.join(missing)}; it needs X (N x D embeddings) and T (N labels)")
        try:
            data = {key: archive[key] for key in ("X", "T", "is_query", "is_gallery") if key in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile) as error:  # object arrays need pickle; truncated data
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


if __name__ == "__main__":
    sys.exit(main())
