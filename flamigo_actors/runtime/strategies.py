"""Strategies: the named, transport-neutral operations of the API layer.

A strategy is a function taking a :class:`StrategyContext` and returning its
result (or raising). Names look like ``app::domain:action``; a
:class:`Registry` belongs to one namespace (``app``) and refuses names outside
it. The WebSocket interface calls strategies, and so can HTTP views, event
listeners, other strategies, the debug shell and tests, each with its own
identity::

    strategies = Registry()

    @strategies.strategy("app::rooms:join", payload=JoinRoom, reply=Joined,
                         errors={404: "no such room"})
    def join(ctx: StrategyContext) -> dict:
        # (a docstring here: its first line is the summary in the contract)
        room = ctx.request.data.room          # a validated JoinRoom
        ctx.identity.subscribe(f"rooms/{room}")
        return {"joined": room}

``payload`` is validated before the handler runs (422 with ``fieldErrors``).
``reply`` and ``errors`` are the strategy's contract (see the README's "The
contract"); the reply is checked against ``reply`` only when the host turns
output checks on (``checks_output``: debug mode, tests), where a wrong shape
answers 500 naming the strategy and the field. The registry also holds the
application's declared client events (:attr:`Registry.events`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

import gevent
import pydantic

from .client_events import ClientEvents, ClientEventSpec
from .conformance import check_value
from .context import Context, ContextHost
from .futures import ActorFuture
from ..core.errors import FieldError, FlamigoError, wrap

if TYPE_CHECKING:
    from ..core.identity import Identity

__all__ = [
    "DeferredReply",
    "PROTOCOL_STATUSES",
    "Registry",
    "Request",
    "Response",
    "Strategy",
    "StrategyContext",
    "StrategyHandler",
]

T = TypeVar("T")

PROTOCOL_STATUSES: dict[int, str] = {
    400: "malformed request (not a JSON object with a topic)",
    401: "not authenticated: call the auth strategy first",
    422: "the payload does not match the strategy's model (fieldErrors lists each field)",
    429: "too many requests: slow down",
    500: "internal error",
    504: "no answer within the strategy's time limit",
}
"""The statuses any strategy may answer, besides the ones it declares (``errors=``)."""

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*::[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)*$")


@lru_cache(maxsize=512)
def _adapter(model: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(model)


def _field_errors(err: pydantic.ValidationError) -> list[FieldError]:
    errors: list[FieldError] = []
    for item in err.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in item["loc"]) or "payload"
        errors.append({"field": field, "error": item["msg"]})
    return errors


class Request:
    """The request a strategy serves.

    Attributes:
        action: the strategy name (``app::rooms:join``).
        payload: the raw JSON payload as received.
        data: the payload bound to the strategy's declared model, when it
            declared one (``payload=`` in :meth:`Registry.strategy`).
    """

    __slots__ = ("action", "payload", "data")

    def __init__(self, action: str, payload: Any, data: Any = None) -> None:
        self.action = action
        self.payload = payload
        self.data = data

    def bind(self, model: type[T]) -> T:
        """Validate the payload into ``model`` (a pydantic model, dataclass or type).

        Raises:
            FlamigoError: status 422 with ``field_errors`` listing each problem.
        """
        try:
            return _adapter(model).validate_python(self.payload)  # type: ignore[no-any-return,arg-type]
        except pydantic.ValidationError as err:
            fields = _field_errors(err)
            summary = "; ".join(f"{f['field']}: {f['error']}" for f in fields)
            raise FlamigoError(
                f"bind({getattr(model, '__name__', model)}): {summary}",
                public="invalid payload",
                status=422,
                field_errors=fields,
            ) from None


class Response:
    """An explicit response object, for strategies that prefer it to ``return``/``raise``."""

    __slots__ = ("result", "error", "_set")

    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._set = False

    def set_result(self, value: Any) -> None:
        """Answer with ``value``."""
        self.result, self.error, self._set = value, None, True

    def set_error(self, error: BaseException) -> None:
        """Answer with ``error`` (its public message and status reach the caller)."""
        self.result, self.error, self._set = None, error, True

    @property
    def is_set(self) -> bool:
        """Whether :meth:`set_result` or :meth:`set_error` was called."""
        return self._set

    @property
    def ok(self) -> bool:
        """True unless an error was set."""
        return self.error is None


class DeferredReply:
    """A reply a strategy hands off so the work runs outside the caller's mailbox.

    Obtained from :meth:`StrategyContext.defer`. Exactly one of
    :meth:`resolve` / :meth:`fail` takes effect; later calls are ignored and
    return False (e.g. after the time limit already answered 504).
    """

    __slots__ = ("strategy", "_settle", "_outcome", "settled", "greenlet", "check")

    def __init__(self, strategy: str) -> None:
        self.strategy = strategy
        self.check: Callable[[Any], None] | None = None  # the reply's model check, when on
        self._settle: Callable[[Any, BaseException | None], None] | None = None
        self._outcome: tuple[Any, BaseException | None] | None = None
        self.settled = False
        self.greenlet: gevent.Greenlet | None = None

    def attach(self, settle: Callable[[Any, BaseException | None], None]) -> None:
        """Set who receives the outcome (the connection, or a waiting caller).

        An outcome that arrived before anyone was attached is handed over now.
        """
        self._settle = settle
        if self._outcome is not None:
            value, error = self._outcome
            self._outcome = None
            self._deliver(settle, value, error)

    def resolve(self, value: Any = None) -> bool:
        """Answer the original request with ``value``."""
        return self._finish(value, None)

    def fail(self, error: BaseException) -> bool:
        """Answer the original request with ``error``."""
        return self._finish(None, error)

    def _finish(self, value: Any, error: BaseException | None) -> bool:
        if self.settled:
            return False
        self.settled = True
        if error is not None and not isinstance(error, FlamigoError):
            error = wrap(f"strategy({self.strategy}): deferred", error)
        if self._settle is not None:
            self._deliver(self._settle, value, error)
        else:
            self._outcome = (value, error)
        return True

    def _deliver(
        self, settle: Callable[[Any, BaseException | None], None], value: Any, error: BaseException | None
    ) -> None:
        # The reply's check runs at delivery: it is set after the strategy returned,
        # possibly after an outcome was already stored.
        if error is None and self.check is not None:
            try:
                self.check(value)
            except FlamigoError as violation:
                value, error = None, wrap(f"strategy({self.strategy})", violation)
        settle(value, error)

    def cancel(self) -> None:
        """Stop the deferred work (the connection ended); nothing will be sent."""
        self.settled = True
        self._outcome = None
        if self.greenlet is not None and not self.greenlet.dead:
            self.greenlet.kill(block=False)


class StrategyContext(Context):
    """The context of one strategy execution: identity, request, response.

    Attributes:
        request: the :class:`Request` being served.
        response: an explicit :class:`Response` the strategy may fill instead
            of returning.
        ack_id: the client's ``ackId`` when the request came over WebSocket
            with one, else ``None``.
    """

    __slots__ = ("request", "response", "ack_id", "deferred")

    def __init__(
        self,
        flamigo: ContextHost,
        identity: Identity,
        request: Request,
        *,
        deadline: float | None = None,
        ack_id: str | int | float | None = None,
    ) -> None:
        super().__init__(flamigo, identity, deadline=deadline)
        self.request = request
        self.response = Response()
        self.ack_id = ack_id
        self.deferred: DeferredReply | None = None

    @property
    def payload(self) -> Any:
        """Shortcut for ``request.payload``."""
        return self.request.payload

    def defer(self, work: Callable[..., Any] | None = None, *args: Any) -> DeferredReply:
        """Hand the reply off: the strategy returns and the reply is sent later.

        With ``work``, it runs in a new greenlet (with this context's identity)
        and its return value or exception settles the reply. Without it, keep
        the returned :class:`DeferredReply` and call ``resolve``/``fail`` later.
        The connection's mailbox is free meanwhile; the strategy time limit
        still applies (504 when it passes first).
        """
        if self.deferred is not None:
            raise RuntimeError(f"strategy {self.request.action} already deferred its reply")
        reply = DeferredReply(self.request.action)
        self.deferred = reply
        if work is not None:

            def run() -> None:
                try:
                    result = work(*args)
                except gevent.GreenletExit:
                    raise
                except BaseException as err:  # noqa: BLE001 - the reply carries it
                    reply.fail(err)
                else:
                    reply.resolve(result)

            reply.greenlet = gevent.spawn(run)
        return reply


StrategyHandler = Callable[[StrategyContext], Any]


@dataclass(frozen=True)
class Strategy:
    """A registered strategy.

    Attributes:
        name: ``namespace::domain:action``.
        handler: the function run for each request.
        payload: model the payload is bound to before the handler runs
            (422 on failure); ``None`` to leave the raw payload.
        public: callable by a WebSocket connection before it authenticates.
        timeout: per-strategy time limit in seconds; ``None`` uses the
            application's default.
        reply: model of the reply (checked when output checks are on);
            ``None`` leaves it undeclared.
        errors: the statuses it may answer besides :data:`PROTOCOL_STATUSES`,
            as ``(status, meaning)`` pairs.
        summary: one line for the contract; ``None`` uses the docstring's first line.
    """

    name: str
    handler: StrategyHandler
    payload: Any = None
    public: bool = False
    timeout: float | None = None
    reply: Any = None
    errors: tuple[tuple[int, str], ...] = ()
    summary: str | None = None

    @property
    def doc(self) -> str:
        """The summary: ``summary=`` or the handler's docstring's first line."""
        if self.summary is not None:
            return self.summary
        return (self.handler.__doc__ or "").strip().split("\n")[0]

    @property
    def typed(self) -> bool:
        """Whether both the request and the reply have declared models."""
        return self.payload is not None and self.reply is not None


class Registry:
    """Strategies of one namespace, registered by decorator or by call.

    Args:
        namespace: the only namespace accepted (``app`` accepts ``app::...``).
    """

    def __init__(self, namespace: str = "app") -> None:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", namespace):
            raise ValueError(f"invalid namespace {namespace!r}: use letters, digits, '_' or '-'")
        self.namespace = namespace
        self._prefix = f"{namespace}::"
        self._strategies: dict[str, Strategy] = {}
        self.events = ClientEvents()
        """The declared client events (see :meth:`client_event`)."""
        self.checks_output = False
        """Check replies (and, through the host, pushes) against their models; set by the host."""

    def __contains__(self, name: object) -> bool:
        return name in self._strategies

    def __iter__(self) -> Iterator[Strategy]:
        return iter(self._strategies.values())

    def __len__(self) -> int:
        return len(self._strategies)

    def in_scope(self, name: str) -> bool:
        """Whether ``name`` belongs to this registry's namespace."""
        return name.startswith(self._prefix)

    def get(self, name: str) -> Strategy | None:
        """The strategy registered under ``name``, or ``None``."""
        return self._strategies.get(name)

    def register(
        self,
        name: str,
        handler: StrategyHandler,
        *,
        payload: Any = None,
        public: bool = False,
        timeout: float | None = None,
        replace: bool = False,
        reply: Any = None,
        errors: Mapping[int, str] | Iterable[tuple[int, str]] | None = None,
        summary: str | None = None,
    ) -> Strategy:
        """Register ``handler`` under ``name``.

        Args:
            payload: the request's model (validated before the handler runs: 422).
            reply: the reply's model (the contract; checked when output checks are on).
            errors: statuses the strategy may answer and what they mean
                (``{404: "room not found"}``), besides the protocol's own.
            summary: one line for the contract (default: the docstring's first line).

        Raises:
            ValueError: the name is malformed, outside this namespace, or taken
                (unless ``replace=True``, which exists to customise built-ins
                such as ``app::websocket:auth``); a declared status is not an
                error status (400-599) or has no description.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"invalid strategy name {name!r}: expected '{self.namespace}::domain:action'"
            )
        if not self.in_scope(name):
            raise ValueError(
                f"strategy {name!r} is outside this registry's namespace: "
                f"names must start with {self._prefix!r}"
            )
        if name in self._strategies and not replace:
            raise ValueError(
                f"strategy {name!r} is already registered "
                f"(by {self._strategies[name].handler.__qualname__}); pick another name"
            )
        if not callable(handler):
            raise TypeError(f"strategy {name!r}: handler must be callable, got {handler!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"strategy {name!r}: timeout must be positive, got {timeout!r}")
        strategy = Strategy(
            name, handler, payload, public, timeout, reply, _statuses(name, errors), summary
        )
        self._strategies[name] = strategy
        return strategy

    def strategy(
        self,
        name: str,
        *,
        payload: Any = None,
        public: bool = False,
        timeout: float | None = None,
        replace: bool = False,
        reply: Any = None,
        errors: Mapping[int, str] | Iterable[tuple[int, str]] | None = None,
        summary: str | None = None,
    ) -> Callable[[StrategyHandler], StrategyHandler]:
        """Decorator form of :meth:`register`; returns the function unchanged."""

        def decorate(handler: StrategyHandler) -> StrategyHandler:
            self.register(
                name, handler, payload=payload, public=public, timeout=timeout, replace=replace,
                reply=reply, errors=errors, summary=summary,
            )
            return handler

        return decorate

    def client_event(
        self,
        topic: str,
        payload: Any = None,
        *,
        topics: Iterable[str] = (),
        summary: str | None = None,
        replace: bool = False,
    ) -> ClientEventSpec:
        """Declare a client event: its client topic, payload model and bus topic patterns.

        See :meth:`ClientEvents.declare` (``ValueError`` on a malformed topic or pattern).
        """
        return self.events.declare(topic, payload, topics=topics, summary=summary, replace=replace)

    def include(self, other: Registry) -> None:
        """Add every strategy of ``other`` (same namespace); duplicates are refused."""
        if other.namespace != self.namespace:
            raise ValueError(
                f"cannot include namespace {other.namespace!r} into {self.namespace!r}"
            )
        for strategy in other:
            self.register(
                strategy.name,
                strategy.handler,
                payload=strategy.payload,
                public=strategy.public,
                timeout=strategy.timeout,
                reply=strategy.reply,
                errors=strategy.errors,
                summary=strategy.summary,
            )
        self.events.include(other.events)

    def resolve(self, name: str) -> Strategy:
        """The strategy to run for ``name``.

        Raises:
            FlamigoError: 403 ("invalid scope") outside the namespace, 404 when unknown.
        """
        strategy = self._strategies.get(name)
        if strategy is not None:
            return strategy
        if not self.in_scope(name):
            raise FlamigoError(
                f"strategy({name}): outside namespace {self.namespace!r}",
                public="invalid scope",
                status=403,
            )
        raise FlamigoError(
            f"strategy({name}): not registered", public=f"unknown strategy {name}", status=404
        )


def run_strategy(strategy: Strategy, ctx: StrategyContext) -> Any:
    """Run ``strategy`` in the current greenlet and return its result.

    Every error leaves as a :class:`FlamigoError` layer named after the
    strategy (``strategy(app::x:y): ...``) keeping the original as its cause.
    """
    try:
        if strategy.payload is not None:
            ctx.request.data = ctx.request.bind(strategy.payload)
        result = strategy.handler(ctx)
    except FlamigoError as err:
        raise wrap(f"strategy({strategy.name})", err)
    except gevent.Timeout:
        raise  # the caller who armed the timeout turns it into a 504
    except (Exception, SystemExit) as err:  # noqa: BLE001 - every failure becomes a layered error
        # SystemExit too: a strategy's sys.exit() must not end the process's actors.
        raise wrap(f"strategy({strategy.name})", err)
    if result.__class__ is ActorFuture and ctx.deferred is None:
        # A domain actor's reply: sent when it resolves, the connection's mailbox free meanwhile.
        _defer_future(ctx, result)
        if strategy.reply is not None and ctx.flamigo.strategies.checks_output:
            _check_reply(strategy, ctx, None)
        return None
    response = ctx.response
    if response.is_set and result is None:
        if response.error is not None:
            raise wrap(f"strategy({strategy.name})", response.error)
        result = response.result
    if strategy.reply is not None and ctx.flamigo.strategies.checks_output:
        _check_reply(strategy, ctx, result)
    return result


def _check_reply(strategy: Strategy, ctx: StrategyContext, result: Any) -> None:
    """Check the reply now, or when a deferred reply is delivered (output checks only)."""

    def check(value: Any) -> None:
        check_value(strategy.reply, value, f"reply of {strategy.name}")

    if ctx.deferred is not None:
        ctx.deferred.check = check
        return
    try:
        check(result)
    except FlamigoError as err:
        raise wrap(f"strategy({strategy.name})", err)


def _statuses(
    name: str, errors: Mapping[int, str] | Iterable[tuple[int, str]] | None
) -> tuple[tuple[int, str], ...]:
    items = errors.items() if isinstance(errors, Mapping) else (errors or ())
    declared: list[tuple[int, str]] = []
    for status, meaning in items:
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"strategy {name!r}: errors: {status!r} is not an error status (400-599)")
        if not isinstance(meaning, str) or not meaning.strip():
            raise ValueError(f"strategy {name!r}: errors: status {status} needs a description")
        declared.append((status, meaning))
    return tuple(sorted(declared))


def _defer_future(ctx: StrategyContext, future: ActorFuture) -> None:
    reply = ctx.defer()

    def settled(done: ActorFuture) -> None:  # in the hub: resolve/fail only tell the connection
        error = done.exception(0)
        if error is not None:
            reply.fail(error)
        else:
            reply.resolve(done.get(0))

    future.add_done_callback(settled)
