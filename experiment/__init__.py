"""Experiment configuration: command line → presets → validation → one frozen ``Config``."""

from experiment.config import EXPERIMENTS, Config, config_from_dict, parse_config
from experiment.validation import validate_against_dataset

__all__ = ["EXPERIMENTS", "Config", "config_from_dict", "parse_config", "validate_against_dataset"]
