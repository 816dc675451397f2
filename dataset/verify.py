"""Check a dataset before a long run: layout, counts against the official ones, missing and unreadable images.

Usage:
    python -m dataset.verify --dataset cub --dataset-dir DataPath
    python -m dataset.verify --dataset sop --dataset-dir /data --json
    python -m dataset.verify --dataset folder --dataset-dir ~/my_images --split-file split.txt
    python -m dataset.verify --dataset glyphs --glyphs-classes 400

Every image is decoded, and every problem found is reported (not only the first). The default output is a
readable report; ``--json`` prints exactly one JSON object
``{"dataset", "root", "splits": {SPLIT: {"images", "classes"}}, "warnings", "errors"}`` on stdout.
Exit status: 0 when no error was found, 2 otherwise. Count mismatches with the official numbers are warnings.
"""

import argparse
import json
import os
import sys

from dataset.base import LoadedDataset, file_paths, find_file_problems, list_files
from dataset.registry import DATASET_NAMES, dataset_root, parse_dataset, split_errors
from lib.errors import UserFacingError

EXIT_ERRORS = 2
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dataset.verify", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    parser.add_argument(
        "--dataset-dir", default=os.path.join(os.getcwd(), "DataPath"), help="Root of all datasets, as for train.py."
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of the report.")
    parser.add_argument("--split-file", default=None, help="folder: explicit train/eval class split.")
    parser.add_argument("--glyphs-classes", type=int, default=0, help="glyphs: classes before halving (0 = all).")
    parser.add_argument("--glyphs-renders", type=int, default=2, help="glyphs: renders per (class, face).")
    parser.add_argument("--glyphs-size", type=int, default=32, help="glyphs: image side in pixels.")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="Threads that decode images.")
    return parser


def verify(args: argparse.Namespace, progress: bool) -> dict:
    """The report as a dict; problems are collected, never raised."""
    report = {
        "dataset": args.dataset,
        "root": dataset_root(args.dataset, args.dataset_dir),
        "splits": {},
        "warnings": [],
        "errors": [],
    }
    try:
        dataset = parse_dataset(
            args.dataset,
            args.dataset_dir,
            split_file=args.split_file,
            glyphs_classes=args.glyphs_classes,
            glyphs_renders=args.glyphs_renders,
            glyphs_size=args.glyphs_size,
        )
    except UserFacingError as error:
        report["errors"].append(str(error))
        return report
    report["root"] = dataset.root
    report["splits"] = {
        name: {"images": len(split), "classes": split.n_classes_present} for name, split in dataset.splits.items()
    }
    report["warnings"] = list(dataset.warnings) + truncated_jpeg_warnings(dataset)
    report["errors"] = split_errors(dataset.name, dataset.splits) + find_file_problems(
        dataset, decode=True, workers=args.workers, progress=progress
    )
    return report


def truncated_jpeg_warnings(dataset: LoadedDataset) -> list[str]:
    """JPEGs without an end-of-image marker: OpenCV decodes them anyway, filling the missing part with grey."""
    truncated = []
    for path in file_paths(dataset):
        try:
            with open(path, "rb") as handle:
                head = handle.read(2)
                handle.seek(max(0, os.path.getsize(path) - 64))
                tail = handle.read().rstrip(b"\x00\r\n\t ")
        except OSError:
            continue  # missing files are reported as errors
        if head == JPEG_START and not tail.endswith(JPEG_END):
            truncated.append(path)
    if not truncated:
        return []
    return [
        f"{dataset.name}: {len(truncated)} JPEG file(s) end without an end-of-image marker and are probably "
        f"truncated (they load with a grey band): {list_files(truncated)}"
    ]


def format_report(report: dict) -> str:
    lines = [f"dataset: {report['dataset']}", f"root:    {report['root']}"]
    if report["splits"]:
        lines.append(f"{'split':<10}{'images':>10}{'classes':>10}")
        lines += [f"{name:<10}{c['images']:>10}{c['classes']:>10}" for name, c in report["splits"].items()]
    for kind in ("warnings", "errors"):
        lines.append(f"{kind} ({len(report[kind])}):")
        lines += [f"  - {message}" for message in report[kind]]
    lines.append(f"FAILED: {len(report['errors'])} error(s)" if report["errors"] else "OK: no errors")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # odd file names never crash the report
    report = verify(args, progress=not args.json and sys.stderr.isatty())
    print(json.dumps(report) if args.json else format_report(report))
    return EXIT_ERRORS if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
