"""Errors of the model family (the CLI prints an ArgusError as one line and exits with its code).

Defined here so models/ needs nothing from pipelines/; pipelines.errors re-exports both.
"""


class ArgusError(Exception):
    exit_code = 1


class ModelError(ArgusError):
    """Unknown preset, a broken checkpoint directory, a non-MoE config."""

    exit_code = 4


class MissingExtraError(ArgusError, ImportError):
    """An optional package of a `pip install 'argus[EXTRA]'` extra is not installed (training,
    evaluation, tests): the production install leaves them out."""
