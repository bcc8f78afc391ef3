"""The errors vir_dense raises for what a user passed: a config, a dataset, a checkpoint.

Each carries one message that names the problem and the fix. The library raises them; only
the command-line tools (:func:`vir_dense.cli.run_cli`) turn them into an exit status.
"""


class ViRDenseError(Exception):
    """A mistake in what was passed to vir_dense, explained in one message."""


class ConfigError(ViRDenseError, ValueError):
    """A config that cannot be used: missing file, misspelt --cfg-options key, wrong scope."""


class DatasetNotFoundError(ViRDenseError, FileNotFoundError):
    """A dataset (root, annotation file or image folder) is not where the config says."""


class CheckpointError(ViRDenseError):
    """A checkpoint file that is missing, truncated or not a checkpoint at all."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose parameter names or shapes do not fit the model of the config."""
