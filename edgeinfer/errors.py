"""One exception tree for edgeinfer.

Every error a user can cause is an :class:`EdgeInferError`: its message says what
was wrong and, after ``Note:``, what was expected or what to do.  The CLI prints
that one line and exits 1 (2 for :class:`UsageError`); only ``--debug`` shows a
traceback.  A bug in edgeinfer itself is :class:`InternalError`, so it is never
mistaken for a user mistake.
"""


class EdgeInferError(Exception):
    """Base class of every error edgeinfer raises on purpose.

    Args:
        message: what was wrong, naming the thing (file, input, option).
        hint: what was expected or how to fix it; shown after ``Note:``.
    """

    exit_code = 1

    def __init__(self, message, hint=None):
        super(EdgeInferError, self).__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self):
        if self.hint:
            return "{} Note: {}".format(self.message.rstrip(), self.hint)
        return self.message


class UsageError(EdgeInferError):
    """An option or argument that cannot be used as given (exit status 2)."""

    exit_code = 2


class ModelError(EdgeInferError):
    """A model file that is missing, unreadable, not ONNX or not supported."""


class DataError(EdgeInferError):
    """Calibration, evaluation or input data that cannot be read or used."""


class BundleError(EdgeInferError):
    """A .eib bundle that is corrupt, tampered, unsafe or incompatible."""


class TransferError(EdgeInferError):
    """A bundle that could not be copied to a device (``edgeinfer push``)."""


class InputError(EdgeInferError):
    """Inputs given to a session that do not match the model's inputs."""


class BackendError(EdgeInferError):
    """A backend that is not installed, not usable here, or failed to run."""


class MissingDependency(BackendError):
    """An optional package is not installed; the hint names the extra."""


class CacheError(EdgeInferError):
    """A result cache that cannot be read or changed as asked (``edgeinfer cache``)."""


class ConversionError(EdgeInferError):
    """A conversion recipe that failed or cannot apply to this model."""


class InternalError(Exception):
    """A bug in edgeinfer, not a user mistake: report it."""


def first_line(exc):
    """An exception's first line of text, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
