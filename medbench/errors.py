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


# Modules of the optional extras (pyproject's optional-dependencies): module → (extra, distribution).
EXTRA_MODULES: dict[str, tuple[str, str]] = {
    "segment_anything": ("weak-labels", "segment-anything"),
    "open_clip": ("weak-labels", "open_clip_torch"),
    "cv2": ("weak-labels", "opencv-python-headless"),
}


def missing_extra(exc: BaseException) -> str | None:
    """The one-line message for an import failure of an optional extra's module, else None.

    Follows ``exc``'s cause chain to the :class:`ImportError` that names the module (a loader's own
    "needs the weak-labels extra" error wraps the interpreter's); an import error of any other
    module is not a missing extra and gets None (it stays a traceback: a bug, not the user's to fix).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = getattr(current, "name", None) if isinstance(current, ImportError) else None
        if name and name.split(".")[0] in EXTRA_MODULES:
            extra, dist = EXTRA_MODULES[name.split(".")[0]]
            outer = " ".join(str(exc).split())
            what = outer.split(" needs the ", 1)[0] if " needs the " in outer else "this"
            reason = " ".join(str(current).split()) or f"No module named {name!r}"
            return (f"{what} needs the {extra} extra: {dist} cannot be imported ({reason}); install it with "
                    f"pip install -e '.[{extra}]' in a source checkout (pip install 'medbench[{extra}]' otherwise)")
        current = current.__cause__ or current.__context__
    return None


def exit_code(exc: BaseException) -> int:
    for cls, code in _CODES.items():
        if isinstance(exc, cls):
            return code
    return 1
