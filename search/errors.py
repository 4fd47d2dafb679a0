"""The user-facing errors: the CLI prints each as one line and exits with code 2."""

from __future__ import annotations

from models import ArchitectureError
from search.evaluation.data import DataError
from search.settings import SettingsError
from search.storage import StorageError, StudyMismatch
from spaces import SpaceError

__all__ = ["USER_ERRORS", "SearchAborted", "UserError"]


class UserError(ValueError):
    """Any other problem the user can fix (a missing file, a study that does not exist)."""

    # True where the command leaves a thread running inside a library's native code (a Ray
    # connection that could not be stopped): the process then ends at once after the message,
    # since finalizing the interpreter under that thread can abort it (SIGABRT, exit -6).
    ends_process = False


class SearchAborted(RuntimeError):
    """A command cannot finish for a reason that is not the user's input (one-line reason):
    the search stops with its study kept, or an optional exporter failed. Exit code 1."""


USER_ERRORS: tuple[type[Exception], ...] = (
    ArchitectureError,
    SpaceError,
    DataError,
    SettingsError,
    StorageError,
    StudyMismatch,
    UserError,
)
