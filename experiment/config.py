"""The resolved, immutable configuration of one run: parsing, serialisation, run name and config hash.

``parse_config`` is the single way from a command line to a ``Config``: defaults, then the preset,
then the flags given explicitly; then aliases are resolved and every flag-only check runs (§2.3).
``config_from_dict`` rebuilds a recorded config and re-checks only what does not depend on the machine or
its files (a faiss-gpu run can be evaluated on a CPU machine).
"""

import dataclasses
import hashlib
import json
import math
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from experiment import margin_loss_resnet50
from experiment.presets import preset_values
from experiment.validation import recorded_config_errors, validate_flags
from lib.errors import ConfigError

EXPERIMENTS = ("margin_loss_resnet50",)

# METHOD.md §9.1: the settings that cannot change results, exhaustively.
HASH_EXCLUDED = frozenset(
    {
        "dataset_dir",
        "log_dir",
        "num_workers",
        "eval_batch_size",
        "cuda_device",
        "verbose",
        "is_debug",
        "wandb_enabled",
        "save_model",
        "save_masks",
        "train_nmi",
        "resume",
        "resume_fallback",
        "checkpoint",
        "overwrite",
        "nb_epochs",
    }
)
# Not settings: where the values came from, and what validation said about them.
_PROVENANCE = ("preset", "warnings", "explicit_flags")
# Hashed flags that name files: their content enters the hash, not their path.
_HASHED_BY_CONTENT = ("split_file", "pretrained_weights")
_INF_FIELDS = ("lr_step", "force_full_embedding_epoch")


@dataclass(frozen=True)
class Config:
    """One field per flag (snake_case of the long name); {0,1} flags are bools, ``inf`` is float("inf")."""

    experiment: str
    preset: str | None
    experiment_id: str
    random_seed: int
    log_dir: str
    cuda_device: int
    checkpoint: str | None
    resume: str | None  # --checkpoint FILE is folded in here
    resume_fallback: bool
    overwrite: bool
    save_model: int
    save_masks: bool
    wandb_enabled: bool
    verbose: bool
    is_debug: bool
    dataset: str
    dataset_dir: str
    split_file: str | None
    ratio_classes: float
    val_ratio: float
    glyphs_classes: int
    glyphs_renders: int
    glyphs_size: int
    sz_resize: int
    sz_crop: int
    album: str | None
    num_replicas: int
    num_workers: int
    batch_sampler: str
    small_class_action: str
    batch_size: int
    num_samples_per_class: int
    eval_batch_size: int  # resolved: --batch-size when not given
    arch: str
    pretrained: bool
    pretrained_weights: str | None
    sz_embedding: int
    features_pooling: str
    init_method: str | None
    dropout: float
    amp: str
    channels_last: bool
    nb_clusters: int
    hierarchy_method: str  # bot_top is resolved to none
    init_clusters: int  # as given; see k_start for the value in effect
    mod_epoch: int
    mod_epoch_freeze: int
    stop_recluster: bool
    clustering_method: str
    penultimate_for_clusters: bool
    backend: str
    clustering_random_state: int | None
    reset_learners_fix: bool
    force_full_embedding_epoch: int | float
    masking_init: str
    masking_lambda: float
    with_l1: bool
    mask_relu: bool
    fixed_mask: bool
    masks_freeze_one_cluster: bool
    masks_sum_for_full_emb: bool
    masks_normalize_before_sum: str | None
    criterion: str
    margin: float
    soft_loss: bool
    lr_beta: float
    alpha: float
    lr_alpha: float
    sampler: str
    optimizer: str
    base_lr: float
    emb_lr_mult: float
    weight_decay: float
    mask_lr_mult: float
    mask_wd_mult: float
    lr_step: float
    lr_gamma: float
    nb_epochs: int
    train_nmi: str  # "auto", "0" or "1"
    warnings: tuple[str, ...] = ()
    explicit_flags: tuple[str, ...] = ()  # config fields given on the command line, in order

    @property
    def k_start(self) -> int:
        """The number of clusters at the start of training: --init-clusters only counts under top_bot."""
        if self.hierarchy_method == "top_bot":
            return min(self.init_clusters, self.nb_clusters)
        return self.nb_clusters

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable; ``inf`` becomes the string "inf" because JSON has no infinity."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and math.isinf(value):
                value = "inf"
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    def hash(self) -> str:
        """8 hex digits over every setting that can change results (METHOD.md §9.1)."""
        settings = {
            key: value for key, value in self.to_dict().items() if key not in HASH_EXCLUDED and key not in _PROVENANCE
        }
        for key in _HASHED_BY_CONTENT:
            if settings[key] is not None:
                settings[key] = {"sha256": _file_sha256(settings[key], key)}
        text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]

    def run_name(self) -> str:
        """e.g. ``sop-2-e512-K32-s4-3fa9c2d1``; the free-text id is made safe for a folder name."""
        run_id = re.sub(r"[^A-Za-z0-9._+-]", "_", self.experiment_id)
        return f"{self.dataset}-{run_id}-e{self.sz_embedding}-K{self.nb_clusters}-s{self.random_seed}-{self.hash()}"


def _file_sha256(path: str, field: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        flag = "--" + field.replace("_", "-")
        raise ConfigError(f"{flag} {path!r} cannot be read ({error.strerror}); pass an existing file.") from None
    return digest.hexdigest()


def _experiment_name(argv: Sequence[str]) -> str:
    """--experiment may appear anywhere, as two tokens or with '='; the last one wins, as in argparse."""
    name = margin_loss_resnet50.EXPERIMENT
    for position, token in enumerate(argv):
        if token == "--experiment" and position + 1 < len(argv):
            name = argv[position + 1]
        elif token.startswith("--experiment="):
            name = token.split("=", 1)[1]
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown --experiment {name!r}; known experiments: {', '.join(EXPERIMENTS)}.")
    return name


def _resolve(values: dict[str, Any]) -> list[str]:
    """Aliases and derived defaults, in place; returns the warnings they cause."""
    notes = []
    if values["hierarchy_method"] == "bot_top":
        values["hierarchy_method"] = "none"
        notes.append("--hierarchy-method bot_top is treated as none (flat K_final clusters from the start).")
    if values["eval_batch_size"] is None:
        values["eval_batch_size"] = values["batch_size"]
    if values["checkpoint"] is not None:
        if values["resume"] is not None and values["resume"] != values["checkpoint"]:
            raise ConfigError(
                f"--checkpoint {values['checkpoint']!r} and --resume {values['resume']!r} disagree; "
                "--checkpoint FILE is the same as --resume FILE, so pass only one of them."
            )
        values["resume"] = values["checkpoint"]
    return notes


def parse_config(argv: Sequence[str], *, cuda_available: bool | None = None) -> Config:
    """Flags → validated Config. ``cuda_available`` None asks torch, and only if a check needs CUDA."""
    argv = list(argv)
    experiment = _experiment_name(argv)
    parser = margin_loss_resnet50.build_parser()
    explicit = margin_loss_resnet50.parse_explicit(parser, argv)
    values = margin_loss_resnet50.default_values()
    values.update(preset_values(explicit.get("preset"), parser))
    values.update(explicit)
    values["experiment"] = experiment
    notes = _resolve(values)
    config = Config(**values, explicit_flags=tuple(explicit))
    warnings = notes + validate_flags(config, cuda_available=cuda_available)
    return dataclasses.replace(config, warnings=tuple(warnings))


def config_from_dict(record: Mapping[str, Any]) -> Config:
    """Rebuild a recorded config (``Config.to_dict``, possibly with extra derived keys, which are ignored).

    Keys missing from an older record take today's defaults. Values of the wrong type, outside a flag's
    choices or failing the value checks of the flags are an error that names the key, so a damaged
    config.json is reported instead of failing later.
    """
    if not isinstance(record, Mapping):
        raise ConfigError(f"a recorded config must be a JSON object, got {type(record).__name__}.")
    hints = typing.get_type_hints(Config)
    values = margin_loss_resnet50.default_values()
    values.update({key: value for key, value in record.items() if key in hints})
    for key in _INF_FIELDS:
        if values[key] == "inf":
            values[key] = math.inf
    if values["eval_batch_size"] is None:
        values["eval_batch_size"] = values["batch_size"]
    for key in ("warnings", "explicit_flags"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    for key, value in list(values.items()):
        values[key] = _checked(key, value, hints[key])
    for flag in margin_loss_resnet50.FLAGS:  # argparse checks the choices of given flags, never the defaults
        if flag.choices is not None and values[flag.dest] not in (*flag.choices, flag.default):
            allowed = ", ".join(map(str, flag.choices))
            raise ConfigError(
                f"recorded config: {flag.dest} = {values[flag.dest]!r} is not one of {allowed}; the record is damaged."
            )
    config = Config(**values)
    errors = recorded_config_errors(config)
    if errors:
        raise ConfigError(f"recorded config fails the checks of its flags ({' '.join(errors)}); the record is damaged.")
    return config


def _checked(key: str, value: Any, hint: Any) -> Any:
    """``value`` if it has the field's type (ints are accepted for floats), else a ConfigError."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, type(int | None)) else (hint,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool) and isinstance(value, kind):
            return value
        if typing.get_origin(kind) is tuple and isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            return value
    raise ConfigError(f"recorded config: {key} = {value!r} is not of type {hint}; the record is damaged.")
