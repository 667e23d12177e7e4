"""Errors of the service that need an HTTP status other than 400 (bad input stays a plain :class:`UserError`)."""

from __future__ import annotations

from llm_embedder.errors import UserError


class NotFound(UserError):
    """An unknown collection, conversation document or augment id (404)."""

    status = 404


class Conflict(UserError):
    """Creating what already exists with other settings (409)."""

    status = 409


class TooLarge(UserError):
    """A request over a size limit (413)."""

    status = 413


class Unauthorized(UserError):
    """A missing or wrong API key (401)."""

    status = 401


def http_status(exc: UserError) -> int:
    """The 4xx status of a user error: its class's ``status``, else 400."""
    return int(getattr(exc, "status", 400))
