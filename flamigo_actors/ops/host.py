"""What the operations tools need from a running application: the :class:`Host` protocol.

``ops`` (inspection, the debug shell, the dashboard) sits below the Flask
integration in the layer order, so it never imports the extension. The
extension (``flamigo_actors.integration.extension.Flamigo``) satisfies
:class:`Host` structurally and hands itself to :func:`~flamigo_actors.ops.dashboard.register_inspection`
and :func:`~flamigo_actors.ops.shell.namespace`.

Everything here is read-only description: no behaviour, no imports of upper
layers (checked by ``tests/test_layout.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flask import Flask

    from ..core.identity import Identity
    from ..core.settings import Settings
    from ..runtime.actor_space import ActorSpace
    from ..runtime.bus import Bus
    from ..runtime.presence import Presence
    from ..runtime.recovery import Recovery
    from ..websocket.hub import Hub

__all__ = ["Counters", "Host"]


class Counters(Protocol):
    """The application's own counters (connections and messages), as :func:`~flamigo_actors.ops.inspect.stats` reads them."""

    messages_in: int
    messages_out: int
    connections_opened: int
    connections_closed: int
    connections_refused: int
    slow_consumers: int
    frames_dropped: int
    rate_limited: int
    bytes_in: int
    bytes_out: int
    refused_by_status: dict[int, int]
    closed_by_code: dict[int, int]


class Host(Protocol):
    """A running Flamigo application as the operations tools see it.

    ``connections`` maps a connection id to an object whose ``client`` has
    ``info()`` (a dict of plain data) and ``user``.
    """

    @property
    def app(self) -> Flask | None: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def bus(self) -> Bus: ...

    @property
    def connections(self) -> Mapping[str, Any]: ...

    @property
    def stats(self) -> Counters: ...

    @property
    def started_at(self) -> float: ...

    @property
    def hub(self) -> Hub: ...

    @property
    def actors(self) -> ActorSpace: ...

    @property
    def recovery(self) -> Recovery: ...

    @property
    def presence(self) -> Presence: ...

    def call(
        self, name: str, payload: Any = None, *, identity: Identity | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run strategy ``name`` and return its result."""
        ...

    def publish(self, event: object, identity: Identity | None = None) -> None:
        """Publish ``event`` on the bus."""
        ...

    def kick(self, conn_id: str, reason: str = ...) -> bool:
        """Close connection ``conn_id``; False when it is not open."""
        ...
