"""Results table and plots over run folders (METHOD.md §8.4). Reads only; never writes into a run folder.

Usage:
    python browse_results.py log/margin_loss_resnet50_masks           # one row per run
    python browse_results.py log -g 'sop-.*-K32' --sort R@1            # runs whose name matches, best R@1 first
    python browse_results.py log -cw 30                                # cut every cell to 30 characters
    python browse_results.py log --csv results.csv                     # the table as CSV, metrics as fractions
    python browse_results.py log -g sop-2-e512 --plot sop.png          # R@1 per epoch of the selected runs

LOG_DIR is searched recursively for run folders (folders holding config.json or epochs.jsonl); it may be one run
folder itself. A run's name is its path relative to LOG_DIR.

Each row shows the best epoch: the highest R@1 by strict improvement over epochs >= 0 (the untrained epoch -1 never
counts; the first occurrence wins), or the highest val/R@1 when the run recorded it. Column `sel` says which:
`test` means the epoch was selected on the test set (METHOD.md §8.5). The R@k columns are the dataset's own list
(§8.3; blank where a run's dataset has no such k), and with NMI, MAP@R and mARP they are the best epoch's values,
printed as percentages with 2 decimals. `status` comes from status.json; a `running` run that has not updated it
for over 2 hours is shown as `running (stale Xh)`, as it was probably killed. Damaged or partial runs are listed
with a `note` saying what is wrong.

--sort COL sorts by a column named as in the header: numeric columns descending (blanks last), text ascending.
--csv writes the same columns, metrics as fractions in [0, 1] at full precision and blanks for missing values.
--plot draws R@1 per epoch (epoch -1 included) for the selected runs; for a single run it adds the cluster sizes
at each recluster and one heatmap of the masks (K x D, before ReLU) per recluster file.
"""

import argparse
import csv
import datetime as dt
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lib.errors import CheckpointError, ConfigError, UserFacingError
from lib.run_reader import RunSummary, as_number, find_run_dirs, read_recluster, summarise_run
from lib.runs import epoch_tag

MASKS_PER_ROW = 4


@dataclass(frozen=True)
class Column:
    """One table column: its raw value per run (for sorting and CSV) and how the table prints it."""

    header: str
    value: Callable[[RunSummary], str | int | float | None]
    numeric: bool = False
    percent: bool = False

    def text(self, run: RunSummary) -> str:
        value = self.value(run)
        if value is None:
            return ""
        return f"{100 * value:.2f}" if self.percent else str(value)


def _selection_label(run: RunSummary) -> str | None:
    if run.best_epoch is None:
        return None
    return "val" if run.selection == "val/R@1" else "test"


def _metric_column(key: str) -> Column:
    return Column(key, lambda run: run.metrics.get(key), numeric=True, percent=True)


def table_columns(runs: list[RunSummary]) -> list[Column]:
    """The columns for these runs: the union of their datasets' R@k lists, in increasing k."""
    ks = sorted({k for run in runs for k in run.recall_ks})
    return [
        Column("name", lambda run: run.name),
        Column("dataset", lambda run: run.dataset or "?"),
        Column("K", lambda run: run.k_final, numeric=True),
        Column("best", lambda run: run.best_epoch, numeric=True),
        Column("epochs", lambda run: run.epochs_run, numeric=True),
        Column("sel", _selection_label),
        *[_metric_column(f"R@{k}") for k in ks],
        *[_metric_column(key) for key in ("NMI", "MAP@R", "mARP")],
        Column("status", lambda run: run.status),
        Column("note", lambda run: "; ".join(" ".join(note.split()) for note in run.notes) or None),  # one line
    ]


def find_column(columns: list[Column], header: str) -> Column:
    for column in columns:
        if column.header.lower() == header.lower():
            return column
    names = ", ".join(column.header for column in columns)
    raise ConfigError(f"--sort {header}: no such column; choose one of: {names}")


def sort_runs(runs: list[RunSummary], column: Column) -> list[RunSummary]:
    """Numeric columns descending, text ascending; runs without a value go last."""
    if column.numeric:
        return sorted(runs, key=lambda run: (column.value(run) is None, -(column.value(run) or 0)))
    return sorted(runs, key=lambda run: (column.value(run) is None, str(column.value(run)).lower()))


def _clip(text: str, width: int | None) -> str:
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def render_table(columns: list[Column], runs: list[RunSummary], width: int | None) -> str:
    headers = [_clip(column.header, width) for column in columns]
    rows = [[_clip(column.text(run), width) for column in columns] for run in runs]
    widths = [max([len(header)] + [len(row[i]) for row in rows]) for i, header in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(size) if column.numeric else cell.ljust(size)
            for cell, size, column in zip(cells, widths, columns, strict=True)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), "  ".join("-" * size for size in widths)] + [line(row) for row in rows])


def write_csv(path: Path, columns: list[Column], runs: list[RunSummary]) -> None:
    """Raw values: metrics as recorded (fractions), blanks for missing values."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([column.header for column in columns])
        for run in runs:
            writer.writerow(["" if column.value(run) is None else column.value(run) for column in columns])


def _epoch_series(run: RunSummary, key: str) -> tuple[list[int], list[float]]:
    pairs = [(record["epoch"], as_number(record.get(key))) for record in run.records]
    pairs = [(epoch, value) for epoch, value in pairs if value is not None]
    return [epoch for epoch, _ in pairs], [100 * value for _, value in pairs]


def _integer_locator():
    from matplotlib.ticker import MaxNLocator  # matplotlib is imported only when plotting

    return MaxNLocator(integer=True, min_n_ticks=1)


def _plot_recall(axes, runs: list[RunSummary]) -> None:

    keys = ("R@1", "val/R@1") if len(runs) == 1 else ("R@1",)
    for run in runs:
        for key in keys:
            epochs, values = _epoch_series(run, key)
            if epochs:
                label = key if len(runs) == 1 else run.name
                axes.plot(epochs, values, marker=".", linestyle="-" if key == "R@1" else "--", label=label)
    if len(runs) == 1 and runs[0].best_epoch is not None:
        axes.axvline(runs[0].best_epoch, color="grey", linestyle=":", label=f"best ({runs[0].selection})")
    axes.set_title("R@1 per epoch")
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(_integer_locator())
    axes.set_ylabel("%")
    if axes.lines:
        axes.legend(fontsize="small")


def _plot_cluster_sizes(axes, reclusters: dict[int, dict]) -> None:
    """One line per cluster id: ids are matched across reclusters, so a line follows one cluster."""

    n_ids = max((len(arrays["sizes"]) for arrays in reclusters.values()), default=0)
    for cluster in range(n_ids):
        points = [
            (epoch, arrays["sizes"][cluster]) for epoch, arrays in reclusters.items() if cluster < len(arrays["sizes"])
        ]
        axes.plot([epoch for epoch, _ in points], [size for _, size in points], marker="o")
    axes.set_title("cluster sizes per recluster")
    axes.set_xlabel("recluster epoch")
    axes.xaxis.set_major_locator(_integer_locator())
    axes.set_ylabel("images")
    if not reclusters:
        axes.text(0.5, 0.5, "no readable recluster files", ha="center", va="center", transform=axes.transAxes)


def _readable_reclusters(run: RunSummary) -> dict[int, dict]:
    reclusters = {}
    for epoch, path in run.recluster_files.items():
        try:
            arrays = read_recluster(path)
        except CheckpointError:
            continue  # already in the run's note
        reclusters[epoch] = {"masks": arrays["masks"], "sizes": [int(size) for size in arrays["sizes"]]}
    return reclusters


def build_figure(runs: list[RunSummary]):
    """R@1 curves; for a single run also cluster sizes and one mask heatmap per recluster."""
    from matplotlib.figure import Figure  # a bare Figure renders PNG with Agg, without pyplot's global state

    if len(runs) != 1:
        figure = Figure(figsize=(9, 5), layout="constrained")
        _plot_recall(figure.add_subplot(), runs)
        return figure
    run = runs[0]
    reclusters = _readable_reclusters(run)
    mask_rows = math.ceil(len(reclusters) / MASKS_PER_ROW)
    figure = Figure(figsize=(14, 4 * (1 + mask_rows)), layout="constrained")
    figure.suptitle(run.name)
    grid = figure.add_gridspec(1 + mask_rows, MASKS_PER_ROW)
    _plot_recall(figure.add_subplot(grid[0, : MASKS_PER_ROW // 2]), runs)
    _plot_cluster_sizes(figure.add_subplot(grid[0, MASKS_PER_ROW // 2 :]), reclusters)
    for index, (epoch, arrays) in enumerate(reclusters.items()):
        axes = figure.add_subplot(grid[1 + index // MASKS_PER_ROW, index % MASKS_PER_ROW])
        masks = arrays["masks"].astype("float32")
        image = axes.imshow(masks, aspect="auto", interpolation="nearest", cmap="viridis")
        axes.set_title(f"masks e{epoch_tag(epoch)} (K={masks.shape[0]})")
        axes.set_xlabel("embedding dimension")
        axes.set_ylabel("cluster")
        axes.yaxis.set_major_locator(_integer_locator())
        figure.colorbar(image, ax=axes)
    return figure


def _check_output(path: Path, flag: str, run_dirs: list[Path]) -> None:
    """Refuse outputs that would land in a run folder, a missing folder or on a folder, before any work is done."""
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {path}: folder {path.parent} does not exist; create it or choose another path")
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name")
    resolved = path.resolve()
    for run_dir in run_dirs:
        if resolved.is_relative_to(run_dir.resolve()):
            raise ConfigError(f"{flag} {path} is inside run folder {run_dir}, which is never written; choose another")


def _run_name(root: Path, run_dir: Path) -> str:
    relative = run_dir.relative_to(root).as_posix()
    return root.resolve().name if relative == "." else relative


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="One row per run folder: best epoch, R@k, NMI, MAP@R, mARP and status.",
        epilog="See the usage notes at the top of browse_results.py.",
    )
    parser.add_argument("log_dir", metavar="LOG_DIR", type=Path, help="folder of run folders, or one run folder")
    parser.add_argument("-g", "--grep", metavar="REGEX", help="only runs whose name matches (re.search)")
    parser.add_argument(
        "-cw", "--column-width", metavar="WIDTH", type=int, help="cut longer cells, e.g. long run names or notes"
    )
    parser.add_argument("--sort", metavar="COL", help="sort by this column (metrics: best first)")
    parser.add_argument("--csv", metavar="FILE", type=Path, help="also write the table as CSV (fractions)")
    parser.add_argument("--plot", metavar="FILE.png", type=Path, help="draw R@1 per epoch (one run: masks too)")
    return parser


def browse(args: argparse.Namespace, now: dt.datetime) -> int:
    root: Path = args.log_dir
    if not root.is_dir():
        raise ConfigError(f"LOG_DIR {root} is not a folder; pass a folder of run folders such as log/<--log-dir>")
    if args.column_width is not None and args.column_width < 4:
        raise ConfigError(f"-cw {args.column_width}: a column needs at least 4 characters")
    try:
        pattern = re.compile(args.grep or "")
    except re.error as error:
        raise ConfigError(f"-g {args.grep!r} is not a valid regular expression: {error}") from error
    run_dirs = find_run_dirs(root)
    plot_path = args.plot if args.plot is None or args.plot.suffix else args.plot.with_name(args.plot.name + ".png")
    for flag, path in (("--csv", args.csv), ("--plot", plot_path)):
        if path is not None:
            _check_output(path, flag, run_dirs)
    if plot_path is not None:
        _check_plot_format(plot_path)
    names = {run_dir: _run_name(root, run_dir) for run_dir in run_dirs}
    runs = [summarise_run(run_dir, name, now) for run_dir, name in names.items() if pattern.search(name)]
    columns = table_columns(runs)
    if args.sort:
        runs = sort_runs(runs, find_column(columns, args.sort))
    print(render_table(columns, runs, args.column_width))
    if not runs:
        print(f"no run folders {'match ' + repr(args.grep) + ' ' if args.grep else ''}under {root}")
    elif any(run.best_epoch is not None for run in runs):
        print("metrics in % at the best epoch; sel test = chosen by R@1 on the test set, val = by val/R@1")
    if args.csv is not None:
        _write_output("--csv", args.csv, lambda: write_csv(args.csv, columns, runs))
    if plot_path is not None:
        if runs:
            _write_output("--plot", plot_path, lambda: build_figure(runs).savefig(plot_path, dpi=90))
        else:
            print(f"nothing to plot; {plot_path} not written")
    return 0


def _check_plot_format(path: Path) -> None:
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        supported = ", ".join(formats)
        raise ConfigError(f"--plot {path}: matplotlib cannot write {path.suffix} files; use one of {supported}")


def _write_output(flag: str, path: Path, write) -> None:
    try:
        write()
    except OSError as error:
        raise ConfigError(f"{flag} {path}: cannot write it ({error.strerror or error}); choose another path") from error
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as request:  # argparse already printed the usage error (or the help)
        return request.code if isinstance(request.code, int) else 0
    try:
        return browse(args, dt.datetime.now(dt.timezone.utc))
    except UserFacingError as error:
        print(f"browse_results.py: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
