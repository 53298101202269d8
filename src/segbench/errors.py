"""The errors users see: one sentence that says what is wrong and what to do.

The CLI prints any :class:`SegbenchError` without a traceback and exits non-zero.
"""


class SegbenchError(Exception):
    """Base of every error meant for the user rather than the developer."""

    exit_code = 2


class InputError(SegbenchError):
    """A user-supplied file or argument is missing, unreadable or inconsistent."""


class SpecError(SegbenchError):
    """A ModelSpec is missing, malformed, or does not match its artifact."""


class RuntimeMissingError(SegbenchError):
    """The runtime library an engine needs is not installed on this machine."""

    exit_code = 3


class EngineError(SegbenchError):
    """An engine failed to build, load or run."""


class ExportError(SegbenchError):
    """A model could not be exported, or the export disagrees with PyTorch."""


class OutputError(SegbenchError):
    """An output could not be written (permissions, full disk, ...)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
