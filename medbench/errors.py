"""Errors that are the user's to fix: printed as one clear line, never as a traceback."""

from __future__ import annotations

from medbench.method import MethodArgsError
from medbench.predictions import FingerprintMismatch, PredictionsFileError
from medbench.task import DataRootError


class ConfigError(ValueError):
    """A malformed ``--config`` file or flag combination."""


class IncompleteRun(RuntimeError):
    """``medbench score`` on a run whose predictions do not cover every planned sample."""


class RunFailed(RuntimeError):
    """Samples failed and ``--allow-failures`` was not given."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    MethodArgsError, FingerprintMismatch, PredictionsFileError, DataRootError, ConfigError, IncompleteRun, RunFailed,
    FileNotFoundError,
)

_CODES = {MethodArgsError: 2, ConfigError: 2}


def _model_errors() -> tuple[type[BaseException], ...]:
    from medbench.backbones.local_models import MedbenchModelError

    return (MedbenchModelError,)


USER_ERRORS = USER_ERRORS + _model_errors()


def exit_code(exc: BaseException) -> int:
    for cls, code in _CODES.items():
        if isinstance(exc, cls):
            return code
    return 1
