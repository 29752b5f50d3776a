"""The contract at run time: output checks and the served AsyncAPI document.

:func:`install_contract` (called by ``init_app``) decides, once, from the
settings:

* output checks (``FLAMIGO_CHECK_OUTPUT``; by default on in debug mode and
  when ``app.testing``): replies of strategies that declare ``reply=`` are
  validated against it, and pushes of declared client events against their
  payload model, through a wrapper around the bus's push encoder. A mismatch
  raises :class:`~flamigo_actors.runtime.conformance.ContractViolation` (500,
  naming the strategy or client topic and each wrong field): the client gets
  that error reply, a publisher gets the exception. Off, nothing is wrapped
  and nothing is checked: production pays nothing.
  :func:`enable_output_checks` turns them on later (the test client does,
  unless the setting says ``false``).
* ``GET /_flamigo/asyncapi.json`` (``FLAMIGO_ASYNCAPI_ENDPOINT``; by default
  on in debug mode): the AsyncAPI 3.0 document, with the request's host as
  the server, generated on each request (cheap: milliseconds for a few dozen
  strategies).
"""

from __future__ import annotations

from typing import Any, Protocol

from flask import Flask, Response, request

from ..ops.asyncapi import asyncapi_document
from ..ops.schemas import ContractHost

__all__ = ["ContractApp", "enable_output_checks", "install_contract"]

ASYNCAPI_PATH = "/_flamigo/asyncapi.json"


class ContractApp(ContractHost, Protocol):
    """What the contract needs of the extension beyond :class:`ContractHost`."""

    @property
    def bus(self) -> Any: ...

    @property
    def debug(self) -> bool: ...


def install_contract(flamigo: ContractApp, app: Flask) -> None:
    """Turn on output checks and the AsyncAPI endpoint as the settings say (see the module)."""
    settings = flamigo.settings
    checks = settings.check_output
    if checks is None:
        checks = flamigo.debug or bool(app.testing)
    if checks:
        enable_output_checks(flamigo)
    serve = settings.asyncapi_endpoint
    if serve is None:
        serve = flamigo.debug
    if serve:
        app.add_url_rule(ASYNCAPI_PATH, "flamigo_asyncapi", lambda: _asyncapi(flamigo))


def enable_output_checks(flamigo: ContractApp) -> None:
    """Check replies and pushes from now on (idempotent; a no-op when the setting is ``false``)."""
    registry = flamigo.strategies
    if registry.checks_output or flamigo.settings.check_output is False:
        return
    registry.checks_output = True
    encode = flamigo.bus.encoder
    events = registry.events

    def checked(client_topic: str, payload: Any) -> bytes:
        events.check(client_topic, payload)
        return encode(client_topic, payload)  # type: ignore[no-any-return]

    flamigo.bus.encoder = checked


def _asyncapi(flamigo: ContractHost) -> Response:
    import orjson

    document = asyncapi_document(flamigo, server=request.host)
    return Response(orjson.dumps(document), mimetype="application/json")
