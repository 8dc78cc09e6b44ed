"""Errors that reach the operator as one line and an exit code."""

from __future__ import annotations

from defed_core.bundle import BundleError, InputError
from defed_core.calibration import CalibrationError
from defed_core.checkpoint import CheckpointError
from defed_core.data import DatasetError


class UserError(Exception):
    """Bad input from the operator: a setting, a path, an argument. Exit code 2."""

    exit_code = 2


class RuntimeFailure(UserError):
    """Something failed while running (broker, database, model). Exit code 1."""

    exit_code = 1


# Library errors that mean "the operator gave us something wrong".
INPUT_ERRORS = (BundleError, CalibrationError, CheckpointError, DatasetError, InputError, FileNotFoundError)
