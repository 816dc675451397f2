"""The experiment configuration: flags and defaults (§2.2, §2.4), presets (§2.5), validation (§2.3), hash (§9.1)."""

import dataclasses
import json
import math
import os
import re
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiment import EXPERIMENTS, Config, config_from_dict, parse_config, validate_against_dataset, validation
from experiment.presets import preset_tokens
from lib.errors import ConfigError, DatasetError

# METHOD.md §2.2 and §2.4, copied by hand (dataset_dir and eval_batch_size are derived, checked apart).
METHOD_DEFAULTS = {
    "experiment": "margin_loss_resnet50",
    "dataset": "cub",
    "arch": "resnet50",
    "sz_embedding": 512,
    "features_pooling": "avg",
    "init_method": None,
    "sz_resize": 256,
    "sz_crop": 224,
    "album": None,
    "num_replicas": 1,
    "nb_clusters": 1,
    "hierarchy_method": "top_bot",
    "init_clusters": 1,
    "mod_epoch": 2,
    "mod_epoch_freeze": 0,
    "stop_recluster": False,
    "clustering_method": "kmeans",
    "penultimate_for_clusters": True,
    "backend": "faiss",
    "clustering_random_state": None,
    "reset_learners_fix": True,
    "criterion": "MarginLoss",
    "margin": 0.2,
    "soft_loss": False,
    "lr_beta": 0.0,
    "alpha": 1.0,
    "lr_alpha": 1.0,
    "sampler": "easypeasy",
    "batch_sampler": "balanced_old",
    "small_class_action": "sample_other",
    "batch_size": 128,
    "num_samples_per_class": 4,
    "num_workers": 4,
    "optimizer": "Adam",
    "base_lr": 1e-5,
    "emb_lr_mult": 1.0,
    "weight_decay": 1e-3,
    "mask_lr_mult": 1.0,
    "mask_wd_mult": 0.0,
    "lr_step": math.inf,
    "lr_gamma": 0.5,
    "masking_init": "ones",
    "masking_lambda": 1.0,
    "with_l1": False,
    "mask_relu": True,
    "fixed_mask": False,
    "masks_freeze_one_cluster": False,
    "masks_sum_for_full_emb": False,
    "masks_normalize_before_sum": None,
    "force_full_embedding_epoch": math.inf,
    "nb_epochs": 100,
    "ratio_classes": 1.0,
    "random_seed": 1,
    "experiment_id": "2",
    "cuda_device": 0,
    "checkpoint": None,
    "save_model": 1,
    "save_masks": False,
    "log_dir": "margin_loss_resnet50_masks",
    "wandb_enabled": False,
    "verbose": False,
    "is_debug": False,
    "preset": None,
    "pretrained": True,
    "pretrained_weights": None,
    "val_ratio": 0.0,
    "amp": "off",
    "channels_last": False,
    "dropout": 0.01,
    "resume": None,
    "resume_fallback": False,
    "overwrite": False,
    "train_nmi": "auto",
    "split_file": None,
    "glyphs_classes": 0,
    "glyphs_renders": 2,
    "glyphs_size": 32,
}
# METHOD.md §9.1, copied by hand.
HASH_EXCLUDED = {
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
PROVENANCE = {"preset", "warnings", "explicit_flags"}

# The seed README's command, verbatim; $NAME, $datadir and (no CUDA here) faiss-gpu are substituted below.
README_TEXT = r"""
python train.py --experiment margin_loss_resnet50 \
                --dataset=sop -i=$NAME -seed=4 \
                --sz-embedding=512 --mod-epoch=2 --nb-clusters=32 --nb-epochs=180 \
                --batch-size=80 --num-samples-per-class=2 --backend=faiss-gpu \
                --lr-gamma=0.3 --mod-epoch-freeze=1 --sampler=distanceweighted \
                --weight-decay=1e-4 --batch-sampler=adaptbalanced \
                --force-full-embedding-epoch=80 --mask-lr-mult=100 \
                --masking-lambda=0.01 --mask-wd-mult=1 --dataset-dir=$datadir
"""
README_ARGV = [
    token.replace("$NAME", "NAME").replace("$datadir", "/x").replace("faiss-gpu", "faiss")
    for token in shlex.split(README_TEXT.replace("\\\n", " "))[2:]
]


def parse(*argv: str) -> Config:
    return parse_config(list(argv), cuda_available=False)


def settings_of(config: Config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in PROVENANCE}


def test_defaults_match_method(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = parse()
    assert {k: getattr(config, k) for k in METHOD_DEFAULTS} == METHOD_DEFAULTS
    assert config.dataset_dir == os.path.join(str(tmp_path), "DataPath")
    assert config.eval_batch_size == 128
    assert config.warnings == () and config.explicit_flags == ()
    field_names = {f.name for f in dataclasses.fields(Config)}
    assert field_names == set(METHOD_DEFAULTS) | {"dataset_dir", "eval_batch_size", "warnings", "explicit_flags"}


def test_seed_readme_command_equals_sop_preset():
    readme = parse(*README_ARGV)
    assert readme.dataset == "sop" and readme.experiment_id == "NAME" and readme.random_seed == 4
    assert (readme.nb_clusters, readme.nb_epochs, readme.batch_size, readme.num_samples_per_class) == (32, 180, 80, 2)
    assert (readme.mod_epoch, readme.mod_epoch_freeze, readme.force_full_embedding_epoch) == (2, 1, 80)
    assert (readme.weight_decay, readme.mask_lr_mult, readme.masking_lambda, readme.mask_wd_mult) == (
        1e-4,
        100.0,
        0.01,
        1.0,
    )
    assert readme.lr_gamma == 0.3 and readme.lr_step == math.inf
    assert readme.sampler == "distanceweighted" and readme.batch_sampler == "adaptbalanced"
    assert readme.dataset_dir == "/x" and readme.warnings == ()
    preset = parse("--preset", "sop", "--backend", "faiss", "-i", "NAME", "--dataset-dir", "/x")
    assert settings_of(preset) == settings_of(readme)
    assert preset.hash() == readme.hash()
    assert preset.run_name() == readme.run_name() == f"sop-NAME-e512-K32-s4-{readme.hash()}"


def test_sop_preset_without_cuda_says_use_faiss(monkeypatch):
    with pytest.raises(ConfigError, match=r"--backend faiss-gpu.*sop.*--backend faiss"):
        parse("--preset", "sop")
    monkeypatch.setattr(validation, "faiss_gpu_count", lambda: 0)
    with pytest.raises(ConfigError, match="GPU build of faiss"):
        parse_config(["--preset", "sop"], cuda_available=True)
    monkeypatch.setattr(validation, "faiss_gpu_count", lambda: 1)
    assert parse_config(["--preset", "sop"], cuda_available=True).backend == "faiss-gpu"


def test_quickstart_preset_and_explicit_overrides():
    quick = parse("--preset", "quickstart")
    assert (quick.dataset, quick.arch, quick.pretrained, quick.nb_clusters, quick.mod_epoch) == (
        "glyphs",
        "resnet18",
        False,
        4,
        2,
    )
    assert (quick.glyphs_classes, quick.glyphs_renders, quick.glyphs_size, quick.sz_resize, quick.sz_crop) == (
        400,
        2,
        32,
        32,
        32,
    )
    assert quick.sampler == "distanceweighted" and quick.backend == "faiss" and quick.num_workers <= 2
    assert quick.force_full_embedding_epoch < quick.nb_epochs  # a conquer stage over the last epochs
    assert quick.explicit_flags == ("preset",)
    # Explicit flags win wherever they appear, even before --preset.
    mine = parse("--batch-size=32", "--preset", "quickstart", "--nb-epochs", "3", "--num-workers", "1")
    assert (mine.batch_size, mine.nb_epochs, mine.num_workers) == (32, 3, 1)
    assert mine.eval_batch_size == quick.eval_batch_size == 256  # still the preset's
    assert set(mine.explicit_flags) == {"batch_size", "preset", "nb_epochs", "num_workers"}
    changed = {k for k, v in settings_of(mine).items() if v != settings_of(quick)[k]}
    assert changed == {"batch_size", "nb_epochs", "num_workers"}
    # An explicit "none" switches a preset's optional value off.
    assert parse("--preset", "quickstart", "--album", "Geom", "--album=none").album is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--experiment", "margin_loss_resnet50", "--nb-epochs", "3"],
        ["--nb-epochs", "3", "--experiment", "margin_loss_resnet50"],
        ["--nb-epochs", "3", "--experiment=margin_loss_resnet50"],
        ["--nb-epochs", "3"],
    ],
)
def test_experiment_anywhere(argv):
    config = parse(*argv)
    assert config.experiment == "margin_loss_resnet50" and config.nb_epochs == 3


@pytest.mark.parametrize("argv", [["--experiment", "resnet"], ["--batch-size", "8", "--experiment=x"]])
def test_unknown_experiment_lists_known(argv):
    with pytest.raises(ConfigError, match="margin_loss_resnet50"):
        parse(*argv)
    assert EXPERIMENTS == ("margin_loss_resnet50",)


@pytest.mark.parametrize(
    "argv, value",
    [
        (["-seed", "4"], ("random_seed", 4)),
        (["-seed=4"], ("random_seed", 4)),
        (["--random-seed=4"], ("random_seed", 4)),
        (["-i", "abc"], ("experiment_id", "abc")),
        (["-i=abc"], ("experiment_id", "abc")),
        (["-crs", "7"], ("clustering_random_state", 7)),
        (["-crs=7"], ("clustering_random_state", 7)),
        (["--clustering-random-state", "7"], ("clustering_random_state", 7)),
        (["--margin=0.3"], ("margin", 0.3)),
        (["--force-full-embedding-epoch", "-1"], ("force_full_embedding_epoch", -1)),
        (["--force-full-embedding-epoch=inf"], ("force_full_embedding_epoch", math.inf)),
        (["--lr-step", "inf"], ("lr_step", math.inf)),
        (["--lr-step", "2.5"], ("lr_step", 2.5)),
        (["--mask-relu", "0"], ("mask_relu", False)),
        (["--fixed-mask=1"], ("fixed_mask", True)),
        (["--verbose"], ("verbose", True)),
        (["--hierarchy-method", "none"], ("hierarchy_method", "none")),
        (["--train-nmi", "0"], ("train_nmi", "0")),
        (["--eval-batch-size", "7"], ("eval_batch_size", 7)),
        (["--init-method", "xavier_normal_0.5"], ("init_method", "xavier_normal_0.5")),
    ],
)
def test_flag_forms(argv, value):
    config = parse(*argv)
    assert getattr(config, value[0]) == value[1]
    assert config.explicit_flags == (value[0],)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bogus", "1"], "--bogus"),
        (["--nb-cluster", "4"], "--nb-clusters"),  # abbreviated long flag
        (["--nb-epoch=4"], "--nb-epoch"),
        (["-se", "4"], "-seed"),  # argparse alone would take this prefix
        (["-cr", "4"], "-crs"),
        (["--batch-size", "abc"], "--batch-size"),
        (["--batch-size", "1e3"], "--batch-size"),
        (["--margin", "nan"], "--margin"),
        (["--margin", "inf"], "--margin"),
        (["--mask-relu", "2"], "--mask-relu"),
        (["--pretrained", "yes"], "--pretrained"),
        (["--dataset", "mnist"], "--dataset"),
        (["--init-clusters", "3"], "--init-clusters"),
        (["--force-full-embedding-epoch", "2.5"], "--force-full-embedding-epoch"),
        (["--lr-step", "nan"], "--lr-step"),
        (["--verbose=1"], "--verbose"),
        (["--batch-size"], "--batch-size"),
        (["--preset", "cars"], "--preset"),
        (["stray"], "stray"),
    ],
)
def test_parse_errors_are_config_errors(argv, message):
    with pytest.raises(ConfigError) as error:
        parse(*argv)
    assert message in str(error.value)


def test_help_prints_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as exited:
        parse("--help")
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    assert "--mod-epoch-freeze" in out and "Default: top_bot" in out
    assert "Default: True" not in out and "Default: False" not in out  # {0,1} flags show 0 or 1
    assert "random initialisation (small built-in data, tests). Default: 1." in out


def test_a_zero_batch_size_is_one_error_not_also_one_for_the_eval_batch_size_it_implies():
    with pytest.raises(ConfigError) as error:
        parse("--batch-size", "0")
    assert str(error.value) == "--batch-size must be a positive integer, got 0."
    with pytest.raises(ConfigError, match="--eval-batch-size must be a positive integer"):
        parse("--eval-batch-size", "0")


@pytest.mark.parametrize(
    "argv, flags",
    [
        (["--batch-size", "10", "--num-samples-per-class", "4"], ["--batch-size", "--num-samples-per-class"]),
        (["--num-samples-per-class", "1"], ["--num-samples-per-class"]),
        (
            ["--batch-sampler", "adaptbalanced", "--album", "Geom", "--num-replicas", "3", "--batch-size", "64"],
            ["--num-replicas"],
        ),
        (
            ["--batch-sampler", "adaptbalanced", "--album", "Geom", "--num-replicas", "2", "--batch-size", "36"],
            ["--num-samples-per-class"],
        ),
        (["--batch-sampler", "adaptbalanced", "--num-samples-per-class", "1", "--batch-size", "8"], ["adaptbalanced"]),
        (["--batch-sampler", "npairs", "--num-samples-per-class", "1"], ["npairs"]),
        (
            ["--batch-sampler", "randombatch", "--album", "Geom", "--num-replicas", "2", "--batch-size", "3"],
            ["--num-replicas"],
        ),
        (
            ["--batch-sampler", "randombatch", "--album", "Geom", "--num-replicas", "2", "--batch-size", "2"],
            ["--num-replicas"],
        ),
        (["--nb-clusters", "2", "--mod-epoch", "2", "--mod-epoch-freeze", "2"], ["--mod-epoch-freeze", "--mod-epoch"]),
        (["--num-replicas", "2", "--batch-sampler", "randombatch"], ["--album"]),
        (["--num-replicas", "2", "--album", "Geom"], ["balanced_old", "adaptbalanced or randombatch"]),
        (["--num-replicas", "2", "--album", "Geom", "--batch-sampler", "npairs"], ["npairs"]),
        (["--masking-init", "normal", "--fixed-mask", "1"], ["--masking-init", "--fixed-mask"]),
        (["--masks-normalize-before-sum", "l1"], ["--masks-sum-for-full-emb 1"]),
        (["--reset-learners-fix", "0"], ["--reset-learners-fix"]),
        (["--arch", "vgg16"], ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]),
        (["--criterion", "KantorovMarginLoss"], ["KantorovMarginLoss", "not supported", "MarginLoss"]),
        (["--criterion", "Contrastive"], ["TripletLoss", "TripletSemihardLoss", "TripletAllLoss", "NPairsLoss"]),
        (["--backend", "faiss-gpu"], ["--backend faiss"]),
        (["--amp", "fp16"], ["--amp", "CUDA"]),
        (["--ratio-classes", "0"], ["--ratio-classes"]),
        (["--ratio-classes", "1.5"], ["--ratio-classes"]),
        (["--val-ratio", "1"], ["--val-ratio"]),
        (["--val-ratio=-0.1"], ["--val-ratio"]),
        (["--lr-step", "0"], ["--lr-step"]),
        (["--lr-step", "-2"], ["--lr-step"]),
        (["--dropout", "1"], ["--dropout"]),
        (["--dropout=-0.5"], ["--dropout"]),
        (["--init-method", "xavier"], ["--init-method"]),
        (["--init-method", "xavier_uniform_"], ["--init-method"]),
        (["--init-method", "xavier_uniform_abc"], ["--init-method"]),
        (["--init-method", "kaiming_uniform"], ["--init-method"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--sz-embedding", "0"], ["--sz-embedding"]),
        (["--nb-clusters", "0"], ["--nb-clusters"]),
        (["--mod-epoch", "0"], ["--mod-epoch"]),
        (["--nb-epochs", "0"], ["--nb-epochs"]),
        (["--num-workers", "-1"], ["--num-workers"]),
        (["--save-model", "-1"], ["--save-model"]),
        (["--glyphs-classes", "-1"], ["--glyphs-classes"]),
        (["--glyphs-renders", "0"], ["--glyphs-renders"]),
        (["--glyphs-size", "0"], ["--glyphs-size"]),
        (["--criterion", "NPairsLoss", "--alpha", "-1"], ["--alpha"]),
        (["--alpha", "0"], ["--alpha"]),
        (["--eval-batch-size", "0"], ["--eval-batch-size"]),
        (["-seed", "-1"], ["--random-seed"]),
        (["--base-lr=-1e-3"], ["--base-lr"]),
        (["--checkpoint", "a.pt", "--resume", "b.pt"], ["--checkpoint", "--resume"]),
        (["--split-file", "/no/such/file"], ["--split-file"]),
        (["--pretrained-weights", "/no/such/file"], ["--pretrained-weights"]),
        (["--wandb-enabled"], ["--wandb-enabled", "pip install wandb"]),  # wandb is not a requirement
    ],
)
def test_validation_errors(argv, flags):
    with pytest.raises(ConfigError) as error:
        parse(*argv)
    for flag in flags:
        assert flag in str(error.value)


def test_several_errors_are_reported_in_one_message():
    with pytest.raises(ConfigError) as error:
        parse("--dropout", "1", "--arch", "vgg", "--reset-learners-fix", "0")
    message = str(error.value)
    assert message.startswith("3 problems") and "--dropout" in message and "--arch" in message


@pytest.mark.parametrize(
    "argv",
    [
        ["--nb-clusters", "1", "--mod-epoch-freeze", "5"],  # F and M ignored with K_final = 1 (§10 #15)
        ["--batch-sampler", "randombatch", "--num-samples-per-class", "1", "--batch-size", "5"],
        ["--batch-sampler", "adaptbalanced", "--album", "Geom", "--num-replicas", "2", "--batch-size", "40"],
        ["--batch-sampler", "npairs", "--batch-size", "10", "--num-samples-per-class", "3"],
        ["--masks-sum-for-full-emb", "1", "--masks-normalize-before-sum", "l1"],
        ["--amp", "bf16", "--channels-last", "--dropout", "0"],
        ["--criterion", "NPairsLoss", "--arch", "resnet101", "--init-method", "xavier_uniform_1"],
        ["--force-full-embedding-epoch", "0", "--lr-step", "10", "--val-ratio", "0.5", "--ratio-classes", "1"],
    ],
)
def test_valid_combinations(argv):
    assert parse(*argv).warnings == ()


def test_amp_fp16_and_faiss_gpu_with_cuda(monkeypatch):
    monkeypatch.setattr(validation, "faiss_gpu_count", lambda: 1)
    config = parse_config(["--amp", "fp16", "--backend", "faiss-gpu"], cuda_available=True)
    assert (config.amp, config.backend) == ("fp16", "faiss-gpu")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--hierarchy-method", "none", "--nb-clusters", "4", "--init-clusters", "2"], "--init-clusters"),
        (["--hierarchy-method", "bot_top", "--nb-clusters", "4"], "bot_top"),
        (["--soft-loss"], "--soft-loss"),
        (["--soft-loss", "--criterion", "NPairsLoss"], "--soft-loss"),
        (["--save-model", "0"], "resumed"),
        (["--sz-resize", "16", "--sz-crop", "64"], "black borders"),
    ],
)
def test_warnings(argv, fragment):
    config = parse(*argv)
    assert len(config.warnings) == 1 and fragment in config.warnings[0]


def test_no_warning_when_flag_applies():
    assert parse("--soft-loss", "--criterion", "TripletLoss").warnings == ()
    assert parse("--hierarchy-method", "none", "--nb-clusters", "4").warnings == ()  # --init-clusters not given
    assert parse("--init-clusters", "2", "--nb-clusters", "4").warnings == ()


def test_bot_top_is_none_and_k_start():
    bot_top = parse("--hierarchy-method", "bot_top", "--nb-clusters", "4", "--init-clusters", "2")
    assert bot_top.hierarchy_method == "none" and bot_top.init_clusters == 2 and bot_top.k_start == 4
    assert len(bot_top.warnings) == 2
    none = parse("--hierarchy-method", "none", "--nb-clusters", "4")
    assert bot_top.hash() == parse("--hierarchy-method", "none", "--nb-clusters", "4", "--init-clusters", "2").hash()
    assert none.k_start == 4
    assert parse("--nb-clusters", "4", "--init-clusters", "2").k_start == 2
    assert parse("--nb-clusters", "1", "--init-clusters", "2").k_start == 1
    assert parse("--nb-clusters", "4").k_start == 1


def test_checkpoint_is_resume_file():
    config = parse("--checkpoint", "run/checkpoints/last.pt")
    assert config.resume == config.checkpoint == "run/checkpoints/last.pt"
    assert parse("--checkpoint", "a.pt", "--resume", "a.pt").resume == "a.pt"
    assert parse("--resume", "runs/x").checkpoint is None


def test_eval_batch_size_follows_batch_size():
    assert parse("--batch-size", "64").eval_batch_size == 64
    assert parse("--batch-size", "64", "--eval-batch-size", "500").eval_batch_size == 500


def _other_value(value):
    """A different value of the same type, for the hash tests."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return 3.0 if math.isinf(value) else value + 0.25
    return f"{value}x" if isinstance(value, str) else "x"


def test_hash_excludes_exactly_the_method_list(tmp_path):
    base = parse("--dataset-dir", str(tmp_path))
    for field in dataclasses.fields(Config):
        if field.name in PROVENANCE or field.name in ("split_file", "pretrained_weights"):
            continue
        changed = dataclasses.replace(base, **{field.name: _other_value(getattr(base, field.name))})
        same = changed.hash() == base.hash()
        assert same == (field.name in HASH_EXCLUDED), field.name


@pytest.mark.parametrize(
    "extra",
    [
        ["--num-workers", "0"],
        ["--nb-epochs", "3"],
        ["--dataset-dir", "/elsewhere"],
        ["--log-dir", "other"],
        ["--eval-batch-size", "999"],
        ["--save-model", "3"],
        ["--train-nmi", "0"],
        ["--overwrite", "--verbose", "--is-debug", "--resume-fallback", "--cuda-device", "1", "--save-masks", "1"],
        ["--resume", "somewhere"],
    ],
)
def test_hash_ignores_excluded_flags(extra):
    assert parse("--batch-size", "64", *extra).hash() == parse("--batch-size", "64").hash()


def test_preset_name_is_not_hashed_but_its_values_are():
    assert parse("--preset", "quickstart").hash() == parse(*preset_tokens("quickstart")).hash()
    assert parse("--preset", "quickstart").hash() != parse().hash()


@pytest.mark.parametrize(
    "extra",
    [
        ["--dropout", "0"],
        ["--amp", "bf16"],
        ["--channels-last"],
        ["--backend", "torch+sklearn"],
        ["-i", "other"],
        ["-seed", "2"],
        ["--preset", "quickstart"],
        ["--lr-step", "10"],
    ],
)
def test_hash_includes_results_flags(extra):
    assert parse(*extra).hash() != parse().hash()


def test_hashed_files_enter_by_content(tmp_path):
    split_a, split_b, split_c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    split_a.write_text("train x\neval y\n")
    split_b.write_text("train x\neval y\n")
    split_c.write_text("train y\neval x\n")
    by_file = {p: parse("--dataset", "folder", "--split-file", str(p)).hash() for p in (split_a, split_b, split_c)}
    assert by_file[split_a] == by_file[split_b] != by_file[split_c]
    assert by_file[split_a] != parse("--dataset", "folder").hash()
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"\x00\x01")
    first = parse("--pretrained-weights", str(weights)).hash()
    weights.write_bytes(b"\x00\x02")
    assert parse("--pretrained-weights", str(weights)).hash() != first


def test_run_name_format():
    config = parse("--dataset", "cars", "-i", "my run/1", "--sz-embedding", "128", "--nb-clusters", "8", "-seed", "3")
    name = config.run_name()
    assert re.fullmatch(r"cars-my_run_1-e128-K8-s3-[0-9a-f]{8}", name)
    assert name.endswith(config.hash())


def test_to_dict_round_trip_through_json(tmp_path):
    split = tmp_path / "split.txt"
    split.write_text("train a\n")
    config = parse("--preset", "quickstart", "--lr-step=inf", "--split-file", str(split), "--soft-loss", "-crs", "5")
    record = config.to_dict()
    assert record["lr_step"] == "inf" and record["force_full_embedding_epoch"] == config.force_full_embedding_epoch
    text = json.dumps(record, allow_nan=False)
    rebuilt = config_from_dict(json.loads(text))
    assert rebuilt == config and rebuilt.hash() == config.hash()
    assert rebuilt.warnings == config.warnings and rebuilt.explicit_flags == config.explicit_flags
    assert config_from_dict(parse().to_dict()).force_full_embedding_epoch == math.inf


def test_config_from_dict_ignores_derived_keys_and_fills_defaults():
    record = parse("--batch-size", "32").to_dict()
    record.update({"K_final": 1, "run_name": "x", "hash": "0" * 8})
    del record["glyphs_size"], record["eval_batch_size"]
    rebuilt = config_from_dict(record)
    assert rebuilt.glyphs_size == 32 and rebuilt.eval_batch_size == 32


@pytest.mark.parametrize("key, value", [("batch_size", "128"), ("mask_relu", 1), ("margin", None), ("warnings", 3)])
def test_config_from_dict_rejects_wrong_types(key, value):
    record = parse().to_dict()
    record[key] = value
    with pytest.raises(ConfigError, match=key):
        config_from_dict(record)
    with pytest.raises(ConfigError):
        config_from_dict(["not", "a", "dict"])


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("sz_embedding", 0, "--sz-embedding"),
        ("margin", -0.2, "--margin"),
        ("batch_size", 81, "--batch-size 81"),  # no longer a multiple of --num-samples-per-class
        ("arch", "vgg16", "--arch"),
        ("dataset", "imagenet", "dataset"),
        ("batch_sampler", "balanced", "batch_sampler"),
    ],
)
def test_config_from_dict_rejects_values_its_flags_would_reject(key, value, named):
    record = parse("--batch-size", "80", "--num-samples-per-class", "2").to_dict()
    record[key] = value
    with pytest.raises(ConfigError, match="damaged") as caught:
        config_from_dict(record)
    assert named in str(caught.value)


def test_config_from_dict_accepts_defaults_outside_the_choices_and_machine_specific_values():
    """A default (None) is never checked against the choices; faiss-gpu and missing files are this machine's
    business, not the record's."""
    record = parse().to_dict()
    record.update(backend="faiss-gpu", split_file="/nowhere/split.json", album=None)
    rebuilt = config_from_dict(record)
    assert rebuilt.backend == "faiss-gpu" and rebuilt.split_file == "/nowhere/split.json" and rebuilt.album is None


def test_validate_against_dataset():
    config = parse("--batch-size", "8", "--num-samples-per-class", "2", "--nb-clusters", "4")
    assert validate_against_dataset(config, n_train_classes=8, n_train_images=100) == []
    warnings = validate_against_dataset(config, n_train_classes=7, n_train_images=100)
    assert len(warnings) == 1 and "--nb-clusters" in warnings[0]
    with pytest.raises(DatasetError, match="1 class"):
        validate_against_dataset(config, n_train_classes=1, n_train_images=100)
    with pytest.raises(ConfigError, match="--batch-size"):
        validate_against_dataset(config, n_train_classes=8, n_train_images=7)


_TOKENS = [
    "--batch-size", "64", "13", "0", "-3", "abc", "--num-samples-per-class", "4", "1", "--nb-clusters",
    "--mod-epoch", "--mod-epoch-freeze", "--lr-step", "inf", "nan", "-inf", "--lr-step=inf", "--mask-relu",
    "2", "--mask-relu=1", "--force-full-embedding-epoch", "2.5", "--dropout", "0.5", "1.0", "--preset",
    "quickstart", "sop", "--preset=sop", "--backend=faiss", "--backend", "faiss-gpu", "--amp", "fp16",
    "bf16", "--experiment", "margin_loss_resnet50", "--experiment=x", "-seed", "-seed=4", "-se", "-i",
    "-i=x", "-crs", "--nb-cluster", "--verbose", "--verbose=1", "--num-replicas", "--album", "Geom",
    "none", "--batch-sampler", "randombatch", "adaptbalanced", "npairs", "--hierarchy-method", "bot_top",
    "--init-clusters", "--criterion", "KantorovMarginLoss", "--arch", "resnet18", "--init-method",
    "xavier_normal_2", "--checkpoint", "--resume", "--", "-", "=", "", "--=x", "---x", "-1.5",
    "--ratio-classes", "--val-ratio", "--eval-batch-size", "--fixed-mask", "--masking-init", "normal",
]  # fmt: skip


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_TOKENS), max_size=10))
def test_any_token_sequence_gives_config_or_config_error(argv):
    try:
        config = parse_config(argv, cuda_available=False)
    except ConfigError as error:
        assert str(error)
    else:
        assert isinstance(config, Config) and config_from_dict(config.to_dict()) == config
