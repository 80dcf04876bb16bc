"""Which exceptions are the user's to fix (bad config, data, files, shapes), as opposed to bugs."""

from __future__ import annotations

__all__ = ["is_user_error"]


def is_user_error(exc: BaseException) -> bool:
    """True for failures a user causes and can fix; the CLI prints them as one line."""
    from spikingjelly_ff.runs.checkpoint import CheckpointError
    from spikingjelly_ff.runs.config import ConfigError
    from spikingjelly_ff.runs.data import DataError
    from spikingjelly_ff.runtime.artifact import ArtifactError

    return isinstance(
        exc, (ConfigError, DataError, CheckpointError, ArtifactError, ValueError, FileNotFoundError, RuntimeError)
    )
