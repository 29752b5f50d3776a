"""How an actor space reaches actors owned by other nodes, and refuses ask cycles across them.

Guarantees:

* **The direct path**: a call to a key that the placement remembers as owned by another
  node (``known_owner``), while no activation of that key (nor a forwarder) holds mail
  here, goes straight to the space's :class:`~.placement.RemoteCalls`: no activation, no
  runner greenlet, no chained future; the remote calls resolve the caller's own future.
  Otherwise the call goes through the key's activation (a forwarder for one burst when
  the key is owned elsewhere). Either way one sender's calls reach the owner in the
  order sent (both paths end in one outbox, and the direct path is taken only when no
  activation still holds earlier calls).
* **Ask cycles across processes**: each remote ask carries its *chain*, the ``kind:key``
  of every actor waiting for its reply (through any number of processes), the caller
  last. The owner refuses at once with :class:`~.actor_errors.ActorDeadlock`, naming the
  cycle, a call whose target, or an actor that target waits for in the owner's process,
  is in the chain: A (process 1) asks B (process 2), B asks A → B's ask fails at once and
  A gets the error. The chain flows through local asks too, from an actor handling a
  message that a chain came with (or towards a key not placed here): A (process 1) asks
  B (process 2), B asks C (placed in process 2), C asks A → refused at once. A local ask
  whose target, or an actor that target waits for, is in the chain is refused at once
  the same way (its future fails; the message is not posted).
* Failures: a remote call that cannot be sent fails the caller's future (an ask) or is
  dropped (a tell), as for the forwarder; a refused cycle is counted in ``deadlocks``.

Costs: the chain exists only for asks made from inside a domain actor towards a key not
placed here, or from an actor whose current message came with a chain; other local asks
between placed actors pay one context-variable read and one attribute test.
"""

from __future__ import annotations

from typing import Any

from .actor_errors import ActorDeadlock
from .domain import check_method
from .futures import ActorFuture, RemoteCallFuture, caller_chain, current_activation

__all__ = ["ask_future", "call_remote", "handle_remote", "owner_elsewhere", "refused_cycle", "remote_chained", "send_remote"]


def ask_future(space: Any, act: Any, method: str) -> ActorFuture:
    """The future of an ask to ``act``, which is not placed yet (it may be a forwarder):
    from inside a domain actor, it names the actors waiting for it (its chain)."""
    caller = current_activation()
    if caller is None or space.remote is None:
        return ActorFuture(act, space.call_timeout, f"{act.name}.{method}")
    return RemoteCallFuture(act, space.call_timeout, f"{act.name}.{method}", [*caller_chain(caller), caller.name])


def remote_chained() -> bool:
    """Whether this greenlet handles a domain actor's message that actors in other
    processes wait for (its chain must flow on through the local asks it makes)."""
    caller = current_activation()
    return caller is not None and getattr(caller.serving, "via", None) is not None


def refused_cycle(space: Any, act: Any, future: ActorFuture) -> bool:
    """Fail ``future`` with ActorDeadlock (True: post nothing) if the asked actor, or an
    actor it waits for here, is among the actors that wait for the reply (its chain)."""
    chain = getattr(future, "via", None)
    if not chain:
        return False
    try:
        refuse_cycle(space, act.cls.kind, act.key, chain)
    except ActorDeadlock as err:
        future.set_exception(err)
        return True
    return False


def owner_elsewhere(space: Any, kind: str, key: str) -> str | None:
    """The other node known to own (kind, key) when no activation (nor forwarder) is here."""
    acts = space._by_kind.get(kind)
    if (acts is not None and key in acts) or space._stopped or space._owner_lookup is None:
        return None  # through the activation's mailbox: after what it holds, in order
    owner = space._owner_lookup(kind, key)
    return owner if owner != space.node_id else None


def call_remote(space: Any, owner: str, kind: str, key: str, method: str, args: tuple[Any, ...],
                kwargs: dict[str, Any], want_reply: bool) -> ActorFuture | None:
    """The direct path: send the call to ``owner`` (the future of its reply, for an ask)."""
    future = ActorFuture(None, space.call_timeout, f"{kind}:{key}.{method}") if want_reply else None
    if want_reply:
        space.stats.asks += 1
    else:
        space.stats.tells += 1
    send_remote(space, space.remote, owner, kind, key, method, args, kwargs, future)
    return future


def send_remote(space: Any, remote: Any, owner: str, kind: str, key: str, method: str,
                args: tuple[Any, ...], kwargs: dict[str, Any], future: ActorFuture | None) -> None:
    """Hand a call to the remote calls, with its chain; ``future`` gets the reply or the error."""
    space.stats.remote_calls += 1
    chain = None
    if future is not None:  # who waits for this reply, for the owner's cycle check
        chain = getattr(future, "via", None)
        if chain is None:
            caller = current_activation()
            if caller is not None and caller.owner is None:  # (a forwarder is nobody)
                chain = [*caller_chain(caller), caller.name]
    try:
        reply = remote.call(owner, kind, key, method, args, kwargs, want_reply=future is not None,
                            timeout=space.call_timeout, future=future, chain=chain)
    except Exception as err:  # noqa: BLE001 - the caller gets it
        if future is not None:
            future.set_exception(err)
        return
    if future is not None and reply is not None and reply is not future:  # a carrier with futures of its own
        reply.add_done_callback(lambda done: _settle(done, future))


def handle_remote(space: Any, kind: str, key: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                  want_reply: bool, chain: list[str] | None) -> ActorFuture | None:
    """Run a call that another node routed here (see ``ActorSpace.handle_remote``)."""
    cls = space.class_of(kind)
    check_method(cls, method)
    if chain:
        refuse_cycle(space, kind, key, chain)
    act = space._activation(cls, key)
    if not want_reply:
        act.post((method, args, kwargs, None))
        space.stats.tells += 1
        return None
    future = RemoteCallFuture(act, space.call_timeout, f"{act.name}.{method}", chain)
    act.post((method, args, kwargs, future))
    space.stats.asks += 1
    return future


def refuse_cycle(space: Any, kind: str, key: str, chain: list[str]) -> None:
    """Raise ActorDeadlock if (kind, key), or what it waits for here, is in ``chain``."""
    acts = space._by_kind.get(kind)
    node = acts.get(key) if acts else None
    path = [f"{kind}:{key}"]
    while True:
        if path[-1] in chain:
            space.stats.deadlocks += 1
            raise ActorDeadlock(chain[chain.index(path[-1]):] + path)
        node = node.waiting_on if node is not None else None
        if node is None or len(path) > 1000:
            return
        path.append(node.name)


def _settle(done: ActorFuture, future: ActorFuture) -> None:
    error = done.exception(0)
    if error is not None:
        future.set_exception(error)
    else:
        future.set(done.get(0))
