"""Errors a person can act on: what is wrong and what to do, in one line."""

from __future__ import annotations


class MlicError(Exception):
    """A user-facing error. The CLI prints ``message`` (and ``hint``) on one line and exits non-zero."""

    exit_code = 2

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

    exit_code = 3


class CalibrationError(MlicError):
    """Calibration data or an INT8/FP16 conversion is unusable."""


class BuildError(MlicError):
    """TensorRT could not parse or build an engine, or an engine does not match this machine."""
