"""Every flag of the ``margin_loss_resnet50`` experiment: name, type, default and when to change it.

The table is data, so that the parser, the defaults, the presets and the config fields cannot drift
apart. Values are only parsed here (syntax); ranges and combinations are checked in ``validation.py``.
The parser's defaults are suppressed, so ``parse_args`` returns exactly the flags given on the command
line, which is what lets explicit flags override a preset.
"""

import argparse
import difflib
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from lib.errors import ConfigError

EXPERIMENT = "margin_loss_resnet50"


def zero_one(text: str) -> bool:
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected 0 or 1, got {text!r}")
    return text == "1"


zero_one.metavar = "{0,1}"


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def float_or_inf(text: str) -> float:
    """A number, or ``inf`` for "never" (e.g. a constant learning rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or inf, got {text!r}") from None
    if math.isnan(value) or value == -math.inf:
        raise argparse.ArgumentTypeError(f"expected a number or inf, got {text!r}")
    return value


float_or_inf.metavar = "X|inf"


def int_or_inf(text: str) -> int | float:
    """An epoch index, or ``inf`` for "never"."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value != math.inf:
        raise argparse.ArgumentTypeError(f"expected an integer or inf, got {text!r}")
    return value


int_or_inf.metavar = "N|inf"


def choice_or_none(*choices: str) -> Callable[[str], str | None]:
    """One of ``choices``, or ``none`` (the default) so that a preset's value can be switched off."""

    def parse(text: str) -> str | None:
        if text == "none":
            return None
        if text not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(choices)}, none)")
        return text

    parse.metavar = "{" + ",".join((*choices, "none")) + "}"
    return parse


def str_or_none(text: str) -> str | None:
    return None if text == "none" else text


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]
    default: Any
    help: str
    parse: Callable[[str], Any] | None = str  # None: an on/off switch without a value
    choices: tuple[Any, ...] | None = None

    @property
    def dest(self) -> str:
        """The config field: snake_case of the long name."""
        long_name = next(name for name in self.names if name.startswith("--"))
        return long_name[2:].replace("-", "_")


def _flag(*names: str, default: Any, help: str, parse=str, choices=None) -> Flag:
    return Flag(names, default, help, parse, choices)


def _switch(name: str, help: str) -> Flag:
    return Flag((name,), False, help, None)


def _zero_one(name: str, default: bool, help: str) -> Flag:
    return Flag((name,), default, help, zero_one, None)


DATASETS = ("cub", "cars", "sop", "inshop", "vid", "folder", "glyphs")
SAMPLERS = ("distanceweighted", "easypeasy", "HPHN", "EPHN", "EPSHN", "HPSHN", "RPSHN", "RPHN")
BATCH_SAMPLERS = ("balanced_old", "adaptbalanced", "randombatch", "npairs")
BACKENDS = ("faiss", "faiss-gpu", "torch+sklearn")

FLAG_GROUPS: dict[str, tuple[Flag, ...]] = {
    "run": (
        _flag(
            "--experiment",
            default=EXPERIMENT,
            choices=(EXPERIMENT,),
            help="Which experiment's flags to use. Keep it: it is the only experiment.",
        ),
        _flag(
            "--preset",
            default=None,
            parse=choice_or_none("quickstart", "sop"),
            help="Named defaults: 'quickstart' (CPU demo on glyphs) or 'sop' (the seed README's SOP recipe). "
            "Any flag given explicitly overrides the preset.",
        ),
        _flag(
            "-i",
            "--experiment-id",
            default="2",
            help="Free-text id that goes into the run name. Change it to keep runs with the same settings apart.",
        ),
        _flag(
            "-seed",
            "--random-seed",
            default=1,
            parse=integer,
            help="Seed of all randomness. Change it for repeated runs of one setting.",
        ),
        _flag(
            "--log-dir",
            default="margin_loss_resnet50_masks",
            help="Runs go to log/<log-dir>/<run name>/. Change it to group a series of runs.",
        ),
        _flag(
            "--cuda-device",
            default=0,
            parse=integer,
            help="GPU index of a single-process run (ignored under torchrun). Change it on multi-GPU machines.",
        ),
        _flag(
            "--checkpoint",
            default=None,
            parse=str_or_none,
            help="Continue from a checkpoint file written by this implementation; same as --resume FILE.",
        ),
        _flag(
            "--resume",
            default=None,
            parse=str_or_none,
            help="Continue a run: a run folder (from its last checkpoint) or a checkpoint file. Needed only "
            "when the folder is not the one this command resolves to; re-running a command resumes by itself.",
        ),
        _switch(
            "--resume-fallback",
            "If the checkpoint to resume from is corrupt, resume from the newest good one of the run folder.",
        ),
        _switch("--overwrite", "Start an existing run again; the old folder is moved aside, never deleted."),
        _flag(
            "--save-model",
            default=1,
            parse=integer,
            help="0: no checkpoints (the run cannot be resumed). 1: best + last. N > 1: also a checkpoint "
            "every N epochs, when you want to evaluate intermediate models.",
        ),
        _zero_one(
            "--save-masks",
            False,
            "1: record the masks after every epoch too (they are always recorded at each recluster). "
            "Set it to study how masks evolve.",
        ),
        _flag(
            "--train-nmi",
            default="auto",
            choices=("auto", "0", "1"),
            help="NMI during training; auto = on iff at most 20,000 points are clustered for it. Use 0 to "
            "save time, 1 to force it on large eval sets.",
        ),
        _switch("--wandb-enabled", "Also send each epoch's record to Weights & Biases (needs wandb)."),
        _switch("--verbose", "Log mask summaries at creation and split, and every optimizer group rebuild."),
        _switch(
            "--is-debug",
            "Log the loss terms, mask norms and mask cosines on the first batch of every epoch "
            "(when a run misbehaves).",
        ),
    ),
    "data": (
        _flag(
            "--dataset",
            default="cub",
            choices=DATASETS,
            help="Training and evaluation dataset; 'folder' is your own class-per-folder tree, 'glyphs' is "
            "built in (no download).",
        ),
        _flag(
            "--dataset-dir",
            default=None,
            help="Root of all datasets. Change it to where your data live.",
        ),
        _flag(
            "--split-file",
            default=None,
            parse=str_or_none,
            help="'folder' dataset only: lines 'train NAME' / 'eval NAME' that override the default "
            "first-half/second-half class split.",
        ),
        _flag(
            "--ratio-classes",
            default=1.0,
            parse=finite_float,
            help="Keep only this fraction (0, 1] of each split's classes, for quick experiments.",
        ),
        _flag(
            "--val-ratio",
            default=0.0,
            parse=finite_float,
            help="Hold out this fraction [0, 1) of the training classes and select the best epoch on them "
            "instead of on the test set. Use it for honest model selection.",
        ),
        _flag(
            "--glyphs-classes",
            default=0,
            parse=integer,
            help="'glyphs': number of characters before the train/eval halving; 0 = all (about 700). "
            "Lower it for faster demos.",
        ),
        _flag(
            "--glyphs-renders",
            default=2,
            parse=integer,
            help="'glyphs': renders per (character, face). Raise it for more images per class.",
        ),
        _flag(
            "--glyphs-size",
            default=32,
            parse=integer,
            help="'glyphs': image side in pixels. Keep --sz-resize/--sz-crop equal to it.",
        ),
        _flag(
            "--sz-resize",
            default=256,
            parse=integer,
            help="Eval transform: shorter side resized to this. Lower it with --sz-crop for small images.",
        ),
        _flag(
            "--sz-crop",
            default=224,
            parse=integer,
            help="Eval center-crop size and training random-crop size.",
        ),
        _flag(
            "--album",
            default=None,
            parse=choice_or_none("Geom", "GeomColor", "ColorHeavy"),
            help="Stronger training augmentation family. Needed for --num-replicas > 1.",
        ),
        _flag(
            "--num-replicas",
            default=1,
            parse=integer,
            help="Copies of each image in a batch, augmented independently (needs --album and adaptbalanced "
            "or randombatch).",
        ),
        _flag(
            "--num-workers",
            default=4,
            parse=integer,
            help="Data-loading worker processes of every loader. Lower it on small machines.",
        ),
        _flag(
            "--batch-sampler",
            default="balanced_old",
            choices=BATCH_SAMPLERS,
            help="How a cluster's batches are composed. adaptbalanced copes with clusters that have few "
            "or small classes.",
        ),
        _flag(
            "--small-class-action",
            default="sample_other",
            choices=("sample_other", "duplicate", "smaller_batch"),
            help="adaptbalanced only: what to do when a class has fewer than --num-samples-per-class images.",
        ),
        _flag(
            "--batch-size",
            default=128,
            parse=integer,
            help="B: images per batch, replicas included. Lower it when memory runs out.",
        ),
        _flag(
            "--num-samples-per-class",
            default=4,
            parse=integer,
            help="S: images of each class in a batch (ignored by randombatch). Use 2 for datasets with "
            "few images per class, such as SOP.",
        ),
        _flag(
            "--eval-batch-size",
            default=None,
            parse=integer,
            help="Batch size of feature extraction and evaluation. Raise it to evaluate faster.",
        ),
    ),
    "model": (
        _flag(
            "--arch",
            default="resnet50",
            help="Backbone: resnet18, resnet34, resnet50, resnet101 or resnet152. resnet18 for CPU demos.",
        ),
        _zero_one(
            "--pretrained",
            True,
            "1: torchvision ImageNet weights. 0: random initialisation (small built-in data, tests).",
        ),
        _flag(
            "--pretrained-weights",
            default=None,
            parse=str_or_none,
            help="Load backbone weights from this local file, e.g. on machines without internet; it is used "
            "whatever --pretrained says.",
        ),
        _flag("--sz-embedding", default=512, parse=integer, help="D: embedding size = mask length."),
        _flag(
            "--features-pooling",
            default="avg",
            choices=("avg", "max"),
            help="Global pooling of the last feature map.",
        ),
        _flag(
            "--init-method",
            default=None,
            parse=str_or_none,
            help="Embedding-layer init: none, pt_splitted, xavier_uniform_<gain>, xavier_normal_<gain>, "
            "kaiming_normal_fan_in, kaiming_normal_fan_out or trunc_normal.",
        ),
        _flag(
            "--dropout",
            default=0.01,
            parse=finite_float,
            help="Dropout probability [0, 1) of the embedding head. Use 0 for exactly comparable runs.",
        ),
        _flag(
            "--amp",
            default="off",
            choices=("off", "bf16", "fp16"),
            help="Mixed precision for the network forward, for speed on GPUs (fp16 needs CUDA).",
        ),
        _switch("--channels-last", "channels-last memory format; often faster on GPUs with --amp."),
    ),
    "divide and conquer": (
        _flag(
            "--nb-clusters",
            default=1,
            parse=integer,
            help="K_final: clusters = learners. 1 is plain metric learning; the paper uses 4 to 32, "
            "fewer for datasets with few classes.",
        ),
        _flag(
            "--hierarchy-method",
            default="top_bot",
            choices=("none", "top_bot", "bot_top"),
            help="top_bot: start from one cluster and split in two every --mod-epoch epochs. "
            "none: K_final clusters from the start. bot_top is an alias of none.",
        ),
        _flag(
            "--init-clusters",
            default=1,
            parse=integer,
            choices=(1, 2),
            help="top_bot only: the starting number of clusters (1 or 2).",
        ),
        _flag(
            "--mod-epoch",
            default=2,
            parse=integer,
            help="M: recluster every M epochs (the paper's division frequency).",
        ),
        _flag(
            "--mod-epoch-freeze",
            default=0,
            parse=integer,
            help="F < M: freeze the backbone for the first F epochs after each recluster, so the "
            "embedding layer and masks adapt to the new clusters first.",
        ),
        _switch("--stop-recluster", "Stop reclustering and freezing once the final partition exists."),
        _flag(
            "--clustering-method",
            default="kmeans",
            choices=("kmeans", "kmeans_adaptive_centroids"),
            help="kmeans with retries until clusters are usable; kmeans_adaptive_centroids (legacy) starts "
            "from the previous clusters' means.",
        ),
        _zero_one(
            "--penultimate-for-clusters",
            True,
            "1: cluster on pooled backbone features. 0: cluster on the embedding.",
        ),
        _flag(
            "--backend",
            default="faiss",
            choices=BACKENDS,
            help="k-means and nearest-neighbour implementation. faiss-gpu on CUDA machines with a GPU "
            "build of faiss; torch+sklearn where faiss is unavailable.",
        ),
        _flag(
            "-crs",
            "--clustering-random-state",
            default=None,
            parse=integer,
            help="Seed of the k-means trials; none = fixed seeds 1234 + trial, as in the original.",
        ),
        _zero_one("--reset-learners-fix", True, "Masks follow the number of clusters. Only 1 is supported."),
        _flag(
            "--force-full-embedding-epoch",
            default=math.inf,
            parse=int_or_inf,
            help="E_full: from this epoch on, train the full unmasked embedding (the conquer stage); "
            "inf = never, <= 0 = always.",
        ),
    ),
    "masks": (
        _flag(
            "--masking-init",
            default="ones",
            choices=("ones", "normal"),
            help="Initial mask values: all ones, or N(0.9, 0.7^2).",
        ),
        _flag(
            "--masking-lambda",
            default=1.0,
            parse=finite_float,
            help="Weight of the mask orthogonality regulariser. The SOP recipe uses 0.01.",
        ),
        _switch("--with-l1", "Add lambda x the mean L1 norm of the masks to the regulariser (sparser masks)."),
        _zero_one("--mask-relu", True, "1: masks pass through ReLU when applied. 0: raw masks."),
        _zero_one("--fixed-mask", False, "1: fixed disjoint binary masks, halved at each split, never trained."),
        _zero_one("--masks-freeze-one-cluster", False, "1: do not train the mask while there is one cluster."),
        _zero_one(
            "--masks-sum-for-full-emb",
            False,
            "1: the unmasked embedding (evaluation, conquer stage) is weighted by the sum of the masks.",
        ),
        _flag(
            "--masks-normalize-before-sum",
            default=None,
            parse=choice_or_none("l1"),
            help="With --masks-sum-for-full-emb 1: L1-normalise each mask before summing.",
        ),
    ),
    "loss": (
        _flag(
            "--criterion",
            default="MarginLoss",
            help="Metric loss: MarginLoss, TripletLoss, TripletSemihardLoss, TripletAllLoss or NPairsLoss.",
        ),
        _flag(
            "--margin",
            default=0.2,
            parse=finite_float,
            help="Margin of the margin and triplet losses; also sets the distance-weighted cut-off 1.2 + margin.",
        ),
        _switch("--soft-loss", "Soft-plus instead of hinge for TripletLoss and TripletSemihardLoss."),
        _flag(
            "--lr-beta",
            default=0.0,
            parse=finite_float,
            help="> 0: the margin loss's boundary beta becomes class-specific and learnt with this LR.",
        ),
        _flag("--alpha", default=1.0, parse=finite_float, help="Initial scale of NPairsLoss."),
        _flag(
            "--lr-alpha",
            default=1.0,
            parse=finite_float,
            help="LR of the NPairsLoss scale; 0 keeps it fixed.",
        ),
        _flag(
            "--sampler",
            default="easypeasy",
            choices=SAMPLERS,
            help="In-batch miner of MarginLoss and TripletLoss. distanceweighted is the paper's setting.",
        ),
    ),
    "optimisation": (
        _flag("--optimizer", default="Adam", choices=("Adam", "AdamW"), help="AdamW decouples weight decay."),
        _flag("--base-lr", default=1e-5, parse=finite_float, help="LR of the backbone; base of the other LRs."),
        _flag(
            "--emb-lr-mult",
            default=1.0,
            parse=finite_float,
            help="Embedding-layer LR = base LR x this. Raise it when the backbone is pretrained.",
        ),
        _flag(
            "--weight-decay",
            default=1e-3,
            parse=finite_float,
            help="Weight decay of backbone and embedding; base of the mask weight decay.",
        ),
        _flag(
            "--mask-lr-mult",
            default=1.0,
            parse=finite_float,
            help="Mask LR = base LR x this. The paper trains masks about 100x faster than the network.",
        ),
        _flag("--mask-wd-mult", default=0.0, parse=finite_float, help="Mask weight decay = weight decay x this."),
        _flag(
            "--lr-step",
            default=math.inf,
            parse=float_or_inf,
            help="Multiply all LRs by --lr-gamma every this many epochs (> 0); inf = constant LRs.",
        ),
        _flag("--lr-gamma", default=0.5, parse=finite_float, help="Step factor of the LR schedule."),
        _flag("--nb-epochs", default=100, parse=integer, help="Epochs to run; raise it to extend a run."),
    ),
}

FLAGS: tuple[Flag, ...] = tuple(flag for group in FLAG_GROUPS.values() for flag in group)
FLAG_NAMES: dict[str, str] = {name: flag.dest for flag in FLAGS for name in flag.names}


def default_values() -> dict[str, Any]:
    """Every flag's default, keyed by config field; ``--dataset-dir`` depends on the current directory."""
    values = {flag.dest: flag.default for flag in FLAGS}
    values["dataset_dir"] = os.path.join(os.getcwd(), "DataPath")
    return values


class ConfigArgumentParser(argparse.ArgumentParser):
    """Parse errors become ConfigError, so callers never see SystemExit except from ``--help``."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}. Run with --help to list the flags.")


_SHOWN_DEFAULTS = {"dataset_dir": "<cwd>/DataPath", "eval_batch_size": "--batch-size"}


def _help_text(flag: Flag) -> str:
    default = _SHOWN_DEFAULTS.get(flag.dest, "none" if flag.default is None else flag.default)
    if flag.parse is zero_one:  # typed as 0 or 1, so shown as 0 or 1, not False or True
        default = int(flag.default)
    text = flag.help if flag.parse is None else f"{flag.help} Default: {default}."
    return text.replace("%", "%%")


def build_parser() -> ConfigArgumentParser:
    """The experiment's parser; a flag that is not given is absent from the parsed namespace."""
    parser = ConfigArgumentParser(
        prog="train.py",
        description="Divide-and-conquer deep metric learning (margin loss, ResNet).",
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    for title, flags in FLAG_GROUPS.items():
        group = parser.add_argument_group(title)
        for flag in flags:
            if flag.parse is None:
                group.add_argument(*flag.names, dest=flag.dest, action="store_true", help=_help_text(flag))
            else:
                group.add_argument(
                    *flag.names,
                    dest=flag.dest,
                    type=flag.parse,
                    choices=flag.choices,
                    metavar=getattr(flag.parse, "metavar", None),
                    help=_help_text(flag),
                )
    return parser


def parse_explicit(parser: ConfigArgumentParser, argv: Sequence[str]) -> dict[str, Any]:
    """The flags given in ``argv``, parsed, in order of first appearance."""
    _reject_unknown_options(argv)
    return vars(parser.parse_args(list(argv)))


_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def _reject_unknown_options(argv: Sequence[str]) -> None:
    """argparse accepts prefixes of single-dash flags (``-se`` for ``-seed``) even with allow_abbrev=False.

    A token right after a flag that takes a value is left to argparse, which reports it in context.
    """
    known = set(FLAG_NAMES) | {"-h", "--help"}
    takes_value = {name for flag in FLAGS if flag.parse is not None for name in flag.names}
    for previous, token in zip([None, *argv], argv, strict=False):
        if (
            previous in takes_value
            or not token.startswith("-")
            or token in ("-", "--")
            or " " in token
            or _NEGATIVE_NUMBER.match(token)
        ):
            continue
        name = token.split("=", 1)[0]
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ConfigError(
                f"unknown flag {name!r} (flags must be spelled in full).{hint} Run with --help to list the flags."
            )
