"""Named defaults (METHOD.md §2.5), written as the command-line flags they stand for.

Presets go through the same parser as the command line, so a preset value is typed and checked exactly
like the flag a user would type. Explicit flags override them (see ``config.parse_config``).
"""

from typing import Any

from experiment.margin_loss_resnet50 import ConfigArgumentParser, parse_explicit
from lib.errors import ConfigError

# The seed README's SOP command; -i and --dataset-dir stay the user's. --lr-gamma has no effect because
# --lr-step stays inf, exactly as in the original.
SOP = {
    "--dataset": "sop",
    "-seed": "4",
    "--sz-embedding": "512",
    "--mod-epoch": "2",
    "--nb-clusters": "32",
    "--nb-epochs": "180",
    "--batch-size": "80",
    "--num-samples-per-class": "2",
    "--backend": "faiss-gpu",
    "--lr-gamma": "0.3",
    "--mod-epoch-freeze": "1",
    "--sampler": "distanceweighted",
    "--weight-decay": "1e-4",
    "--batch-sampler": "adaptbalanced",
    "--force-full-embedding-epoch": "80",
    "--mask-lr-mult": "100",
    "--masking-lambda": "0.01",
    "--mask-wd-mult": "1",
}

# ---- quickstart: values tuned on 2 CPU cores against the glyphs calibration (METHOD.md §12). ----
# Retune here only, then re-verify the preset end to end and update the README's recorded wall time.
QUICKSTART_TUNED = {
    "--batch-size": "64",
    "--num-samples-per-class": "4",
    "--nb-epochs": "6",
    "--force-full-embedding-epoch": "5",
    "--base-lr": "1e-3",
    "--lr-step": "4",  # the last two epochs (K = 4, then the conquer stage) at 0.3x the learning rates
    "--lr-gamma": "0.3",
    "--emb-lr-mult": "1",
    "--mask-lr-mult": "10",
    "--masking-lambda": "0.01",
    "--mod-epoch-freeze": "0",
    "--weight-decay": "1e-4",
    "--batch-sampler": "balanced_old",
    "--eval-batch-size": "256",
}

# The full method on built-in data, from scratch, on CPU.
QUICKSTART = {
    "--dataset": "glyphs",
    "--glyphs-classes": "400",
    "--glyphs-renders": "2",
    "--glyphs-size": "32",
    "--sz-resize": "32",
    "--sz-crop": "32",
    "--arch": "resnet18",
    "--pretrained": "0",
    "--criterion": "MarginLoss",
    "--sampler": "distanceweighted",
    "--hierarchy-method": "top_bot",
    "--nb-clusters": "4",
    "--mod-epoch": "2",
    "--backend": "faiss",
    "--num-workers": "0",  # glyphs live in memory: worker processes would only compete for the 2 cores
    **QUICKSTART_TUNED,
}

PRESETS: dict[str, dict[str, str]] = {"quickstart": QUICKSTART, "sop": SOP}


def preset_tokens(name: str) -> list[str]:
    """The preset as command-line tokens (``--flag=value``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown --preset {name!r}; known presets: {', '.join(sorted(PRESETS))}.")
    return [f"{flag}={value}" for flag, value in PRESETS[name].items()]


def preset_values(name: str | None, parser: ConfigArgumentParser) -> dict[str, Any]:
    """The preset's values keyed by config field; empty without a preset."""
    return {} if name is None else parse_explicit(parser, preset_tokens(name))
