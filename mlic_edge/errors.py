"""Errors a person can act on: what is wrong and what to do, in one line; and the exit codes, each defined once."""

from __future__ import annotations

EXIT_INTERNAL_ERROR = 1  # a bug: one line, the traceback with --debug
EXIT_CHECK_FAILED = 1  # doctor: a check failed
EXIT_USER_ERROR = 2  # bad input, a missing file, a refusal (MlicError)
EXIT_PARITY_FAILED = 3  # parity past a tolerance (ParityError)
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2, the shell's convention
EXIT_TERMINATED = 143  # SIGTERM (systemd, docker stop, kill): 128 + 15


class MlicError(Exception):
    """A user-facing error. The CLI prints ``message`` (and ``hint``) on one line and exits non-zero."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class NonFiniteError(MlicError, ValueError):
    """A NaN or inf where a number is read or compared (``mlic_edge.spec.require_finite``). A ValueError too, as the
    metrics' other refusals of bad input are."""


class DataError(MlicError):
    """A dataset, image or label problem."""


class PickleRefused(MlicError):
    """A pickle asks for more than plain data, so unpickling it could run code from the file (mlic_edge/pickles.py);
    read only with --trust-pickle."""


class RunDirError(MlicError):
    """A run directory lacks what a stage needs."""


class LineageError(RunDirError):
    """A file of the run was made from something other than what the run holds now (export/lineage.py), or cannot
    be read: refused wherever it is used, never skipped."""


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


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (mlic_edge/stops.py): long work unwinds through it, removing its temporary files, and
    the CLI prints one line and exits 130 or 143. A BaseException, so no ``except Exception`` swallows it, and not a
    KeyboardInterrupt, which Typer would turn into a silent exit."""

    def __init__(self, signum: int, note: str | None = None) -> None:
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.note = note
        super().__init__(self.signal_name)

    @property
    def exit_code(self) -> int:
        import signal

        return EXIT_TERMINATED if self.signum == signal.SIGTERM else EXIT_INTERRUPTED
