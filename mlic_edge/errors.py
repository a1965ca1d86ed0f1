"""Errors a person can act on: what is wrong and what to do, in one line; and the exit codes, each defined once."""

from __future__ import annotations

EXIT_INTERNAL_ERROR = 1  # a bug: one line, the traceback with --debug
EXIT_CHECK_FAILED = 1  # doctor: a check failed
EXIT_USER_ERROR = 2  # bad input, a missing file, a refusal (MlicError)
EXIT_PARITY_FAILED = 3  # parity past a tolerance (ParityError)
EXIT_INTERRUPTED = 130  # Ctrl-C


class MlicError(Exception):
    """A user-facing error. The CLI prints ``message`` (and ``hint``) on one line and exits non-zero."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class DataError(MlicError):
    """A dataset, image or label problem."""


class RunDirError(MlicError):
    """A run directory lacks what a stage needs."""


class BackendError(MlicError):
    """An inference backend is missing or failed."""


class SourceError(MlicError):
    """A camera, stream, video or image source cannot be opened or was lost."""


class ParityError(MlicError):
    """The result is further from the reference than the tolerance allows."""

    exit_code = EXIT_PARITY_FAILED


class CalibrationError(MlicError):
    """Calibration data or an INT8/FP16 conversion is unusable."""


class BuildError(MlicError):
    """TensorRT could not parse or build an engine, or an engine does not match this machine."""
