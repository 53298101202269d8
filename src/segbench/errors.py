"""The errors users see: one sentence that says what is wrong and what to do.

The CLI prints any :class:`SegbenchError` without a traceback and exits with its ``exit_code``:
2 for a command line that asks for something impossible (:class:`UsageError`, as argparse's own
errors), 3 for a runtime this machine lacks (:class:`RuntimeMissingError`), 1 for any other
failure of the work itself (a bad input file, a runtime that fails, a full disk). Interrupted
commands exit 130 (SIGINT) or 143 (SIGTERM): :mod:`segbench.signals`.
"""


class SegbenchError(Exception):
    """Base of every error meant for the user rather than the developer."""

    exit_code = 1


class UsageError(SegbenchError):
    """The command line itself is wrong: options that conflict, a required one missing, a value
    that can never work (told apart from every input file)."""

    exit_code = 2


class InputError(SegbenchError):
    """A user-supplied file or argument is missing, unreadable or inconsistent."""


class SpecError(SegbenchError):
    """A ModelSpec is missing, malformed, or does not match its artifact."""


class RuntimeMissingError(SegbenchError):
    """The runtime library an engine needs is not installed on this machine (exit 3: the same
    command can work on a machine that has it, which a scheduler may want to tell apart)."""

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


def show_warnings_in_one_line() -> None:
    """segbench's own warnings printed as ``segbench: warning: ...``, one line, from here on in this
    process (the CLI, and the children that measure for it); other libraries' as Python shows them."""
    import os
    import warnings

    if getattr(warnings.showwarning, "segbench", False):
        return
    python_show = warnings.showwarning
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if os.path.abspath(filename).startswith(package):
            import sys

            print(f"segbench: warning: {message}", file=file or sys.stderr)
        else:
            python_show(message, category, filename, lineno, file, line)

    show.segbench = True
    warnings.showwarning = show
