"""Exception classes raised by hessnb; each message says what to change."""

from __future__ import annotations

__all__ = ["HessnbError", "NonDeterministicError", "NonFiniteError", "RunFileError"]


class HessnbError(Exception):
    """Base class of hessnb's own errors."""


class NonDeterministicError(HessnbError, ValueError):
    """Two passes over the same batches gave different results."""


class NonFiniteError(HessnbError, ValueError, FloatingPointError):
    """The loss or a Hessian-vector product is NaN or infinite."""


class RunFileError(HessnbError, ValueError):
    """A run file is corrupt, truncated, or was written with different settings."""
