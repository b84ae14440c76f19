"""Errors a user can act on: the CLI prints them as one line and exits non-zero, no traceback."""


from models.errors import ArgusError, ModelError  # noqa: F401 - one hierarchy, defined below models/


class BrokerError(ArgusError):
    """The broker cannot be started, reached or used (port taken, binary missing, not answering)."""

    exit_code = 2


class StoreError(ArgusError):
    exit_code = 3


class StoreRejected(StoreError):
    """The database refused the data itself (a value it cannot hold, a constraint): retrying the same
    rows cannot succeed. `permanent` tells retry loops not to wait for it."""

    permanent = True

