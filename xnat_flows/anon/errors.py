"""Errors of the de-identification engine: they carry facts; the CLI and Prefect layers word the hint."""

from __future__ import annotations


class ScriptError(ValueError):
    """A script that cannot run: a syntax error, an unknown function, a wrong argument count.

    Raised by :func:`xnat_flows.anon.compile_script` before any file is touched, so nothing is
    sent with a broken script. ``line`` and ``column`` are 1-based and point into the script text.
    """

    def __init__(self, message: str, *, line: int, column: int, source: str = "<script>") -> None:
        self.message = message
        self.line = line
        self.column = column
        self.source = source
        super().__init__(f"{source}:{line}:{column}: {message}")


class AnonError(Exception):
    """A file the script or profile cannot be applied to (not DICOM, compressed pixels under
    ``alterPixels``, a variable the script needs and was not given...).

    The file is not sent, and never its original instead. ``path`` is filled in by callers that
    know the file's name (``apply_bytes`` sees only bytes).
    """

    def __init__(self, reason: str, *, path: str | None = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)

    def with_path(self, path: str) -> AnonError:
        """The same error naming the file it was raised for."""
        return AnonError(self.reason, path=path)
