"""Layered errors: chain, public message, status, path-like text, wire payload."""

import pytest

from flamigo_actors import FlamigoError, not_found, public_message, status_of, wrap
from flamigo_actors.core.errors import GENERIC_PUBLIC_MESSAGE, as_payload, chain, field_errors_of


def layered() -> FlamigoError:
    try:
        try:
            raise TimeoutError("timeout")
        except TimeoutError as err:
            raise wrap("find(db)", err)
    except FlamigoError as err:
        try:
            raise wrap("listing", err, public="messages unavailable", status=503)
        except FlamigoError as outer:
            return wrap("strategy(app::x:y)", outer)


def test_str_is_path_like_from_outside_in() -> None:
    assert str(layered()) == "strategy(app::x:y): listing: find(db): TimeoutError: timeout"


def test_chain_keeps_every_layer_as_cause() -> None:
    layers = list(chain(layered()))
    assert [type(e).__name__ for e in layers] == ["FlamigoError"] * 3 + ["TimeoutError"]
    assert layers[-1].args == ("timeout",)


def test_public_message_is_the_outermost_public_one() -> None:
    err = layered()
    assert public_message(err) == "messages unavailable"
    outer = wrap("retry", err, public="try again later")
    assert public_message(outer) == "try again later"


def test_public_message_never_leaks_inner_text() -> None:
    err = wrap("strategy(app::x)", RuntimeError("password=hunter2 at db.internal"))
    assert public_message(err) == GENERIC_PUBLIC_MESSAGE
    payload = as_payload(err, debug=False)
    assert "hunter2" not in repr(payload)
    assert payload == {"message": GENERIC_PUBLIC_MESSAGE, "status": 500}


def test_trace_only_in_debug() -> None:
    err = wrap("strategy(app::x)", RuntimeError("secret detail"))
    assert "trace" not in as_payload(err, debug=False)
    trace = as_payload(err, debug=True)["trace"]
    assert "secret detail" in trace and "RuntimeError" in trace


def test_status_is_outermost_explicit_or_500() -> None:
    assert status_of(RuntimeError("x")) == 500
    assert status_of(layered()) == 503
    inner = not_found("no such room")
    assert status_of(wrap("outer", inner)) == 404
    assert public_message(wrap("outer", inner)) == "no such room"
    assert status_of(wrap("outer", inner, status=410)) == 410


def test_field_errors_only_for_422() -> None:
    fields = [{"field": "room", "error": "required"}]
    err = wrap("strategy(app::x)", FlamigoError("bind", public="invalid payload", status=422, field_errors=fields))
    assert field_errors_of(err) == fields
    assert as_payload(err, debug=False)["fieldErrors"] == fields
    assert "fieldErrors" not in as_payload(not_found(), debug=False)


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_helpers_set_status(status: int) -> None:
    from flamigo_actors import bad_request, forbidden, unauthorized

    maker = {400: lambda: bad_request("bad"), 401: unauthorized, 403: forbidden, 404: not_found}[status]
    assert status_of(maker()) == status
