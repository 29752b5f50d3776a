"""The typed TypeScript client: a ``.ts`` module generated from the application's contract.

``flamigo-actors schema MODULE:FACTORY --format typescript`` writes one
TypeScript module, made from the same JSON Schemas as the AsyncAPI document
(no hand-written types), that types the browser client ``flamigo.js``:

* an interface per declared model, and ``Strategies`` / ``ClientEvents``
  mapping every strategy to ``{payload, reply, errors}`` (``errors``: the union
  of the statuses it may answer) and every client topic to its payload;
* ``Typed<C>``: a flamigo.js client whose ``request`` and ``on`` are typed
  (``request("app::rooms:send", {room, text})`` checks the payload and types
  the reply; ``on("chat:message", (p) => ...)`` types ``p``);
* ``createClient(client)``: one method per strategy, grouped by domain
  (``client.rooms.send({room, text}): Promise<SentReply>``), plus the typed
  ``request``/``on`` and the untouched ``raw`` client;
* ``isStrategyError(error, "app::rooms:send")``, narrowing a rejection to
  the statuses that strategy declares.

Untyped strategies and events (no model) are typed ``any``: they compile as
before, and the contract flags them. A strategy whose method name would clash
(two names mapping to one identifier, a group named like a method, or
``raw``/``request``/``on``) gets no method; ``request`` still reaches it.
JSON Schema mapping: objects become closed interfaces (pydantic ignores
unknown keys) unless they allow additional properties; ``integer`` becomes
``number``; ``anyOf``/``oneOf`` unions; ``allOf`` intersections; tuples for
``prefixItems``. The output compiles with ``tsc --strict``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .schemas import ERROR_SCHEMA, Contract, ContractHost, describe

__all__ = ["typescript_module"]

_IDENT = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_RESERVED_TOP = {"raw", "request", "on"}


def _type_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_$]", "_", name)
    return cleaned if _IDENT.match(cleaned) else f"_{cleaned}"


def _member(name: str) -> str:
    """A method or group identifier: ``rooms-list`` → ``roomsList``."""
    parts = [p for p in re.split(r"[^A-Za-z0-9_$]+", name) if p]
    if not parts:
        return "_"
    text = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
    return text if _IDENT.match(text) else f"_{text}"


def _key(name: str) -> str:
    return name if _IDENT.match(name) else json.dumps(name)


def _doc(schema: dict[str, Any], indent: str) -> str:
    text = schema.get("description") or ""
    if not text:
        return ""
    lines = str(text).replace("*/", "* /").strip().splitlines()
    if len(lines) == 1:
        return f"{indent}/** {lines[0]} */\n"
    return f"{indent}/**\n" + "".join(f"{indent} * {line}\n" for line in lines) + f"{indent} */\n"


def _ts(schema: Any, indent: str = "") -> str:
    """The TypeScript type of a JSON Schema (references to ``#/$defs/X`` become ``X``)."""
    if schema is True or schema == {}:
        return "unknown"
    if not isinstance(schema, dict):
        return "never" if schema is False else "unknown"
    if "$ref" in schema:
        return _type_name(schema["$ref"].rsplit("/", 1)[-1])
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"]) or "never"
    for combinator, joiner in (("anyOf", " | "), ("oneOf", " | "), ("allOf", " & ")):
        if combinator in schema:
            members = [_ts(s, indent) for s in schema[combinator]]
            return joiner.join(f"({m})" if " " in m and not m.startswith("{") else m for m in members)
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(_ts({**schema, "type": k}, indent) for k in kind)
    if kind == "string":
        return "string"
    if kind in ("number", "integer"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "null":
        return "null"
    if kind == "array":
        if "prefixItems" in schema:
            items = [_ts(s, indent) for s in schema["prefixItems"]]
            return "[" + ", ".join(items) + "]"
        item = _ts(schema.get("items", {}), indent)
        return f"({item})[]" if " " in item and not item.startswith("{") else f"{item}[]"
    if kind == "object" or "properties" in schema:
        return _object(schema, indent)
    return "unknown"


def _object(schema: dict[str, Any], indent: str) -> str:
    inner = indent + "  "
    required = set(schema.get("required", ()))
    lines: list[str] = []
    for name, prop in schema.get("properties", {}).items():
        optional = "" if name in required else "?"
        doc = _doc(prop, inner) if isinstance(prop, dict) else ""
        lines.append(f"{doc}{inner}{_key(name)}{optional}: {_ts(prop, inner)};")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) or extra is True or (extra is None and not schema.get("properties")):
        lines.append(f"{inner}[key: string]: {_ts(extra if isinstance(extra, dict) else {}, inner)};")
    if not lines:
        return "{}"
    return "{\n" + "\n".join(lines) + f"\n{indent}}}"


def _group_tree(contract: Contract) -> dict[str, Any]:
    """Strategies as nested groups by their ``domain:action`` parts (clashing ones left out)."""
    tree: dict[str, Any] = {}
    prefix = f"{contract.namespace}::"
    for entry in contract.strategies:
        rest = entry.name[len(prefix):] if entry.name.startswith(prefix) else entry.name
        parts = [_member(part) for part in rest.split(":")]
        if parts[0] in _RESERVED_TOP:
            continue
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            if parts[-1] not in node:
                node[parts[-1]] = entry.name
    return tree


def _interface(tree: dict[str, Any], indent: str) -> str:
    inner = indent + "  "
    lines = []
    for key, value in tree.items():
        if isinstance(value, dict):
            lines.append(f"{inner}{key}: {_interface(value, inner)};")
        else:
            name = json.dumps(value)
            lines.append(
                f"{inner}{key}(...args: Args<{name}>): Promise<ReplyOf<{name}>>;"
            )
    return "{\n" + "\n".join(lines) + f"\n{indent}}}"


def _implementation(tree: dict[str, Any], indent: str) -> str:
    inner = indent + "  "
    lines = []
    for key, value in tree.items():
        if isinstance(value, dict):
            lines.append(f"{inner}{key}: {_implementation(value, inner)},")
        else:
            lines.append(f"{inner}{key}: method({json.dumps(value)}),")
    return "{\n" + "\n".join(lines) + f"\n{indent}}}"


def typescript_module(host: ContractHost, *, source: str = "the application") -> str:
    """The TypeScript module typing ``host``'s application (see the module docstring).

    Args:
        source: what generated it, for the header comment (e.g. ``app:create_app``).
    """
    contract = describe(host, "#/$defs/{model}")
    out: list[str] = [
        f"// The contract of {contract.title}, generated by `flamigo-actors schema {source} "
        "--format typescript`",
        "// from the server's declared models: do not edit, regenerate.",
        "",
    ]
    definitions = {**contract.definitions, "FlamigoErrorPayload": ERROR_SCHEMA}
    for name, schema in definitions.items():
        body = _ts(schema)
        doc = _doc(schema, "")
        if body.startswith("{"):
            out.append(f"{doc}export interface {_type_name(name)} {body}\n")
        else:
            out.append(f"{doc}export type {_type_name(name)} = {body};\n")
    out.append("/** Every strategy: its request payload, its reply and the statuses of its error replies. */")
    out.append("export interface Strategies {")
    for entry in contract.strategies:
        payload = _ts(entry.request, "    ") if entry.typed_request else "any"
        reply = _ts(entry.reply, "    ") if entry.typed_reply else "any"
        statuses = " | ".join(str(status) for status in entry.errors)
        flag = "(untyped: it declares no model)" if entry.untyped else ""
        comment = " ".join(part for part in (entry.summary.replace("*/", "* /"), flag) if part)
        if comment:
            out.append(f"  /** {comment} */")
        out.append(
            f"  {json.dumps(entry.name)}: {{ payload: {payload}; reply: {reply}; errors: {statuses} }};"
        )
    out.append("}\n")
    out.append("/** Every client event (push): its client topic and payload. */")
    out.append("export interface ClientEvents {")
    for event in contract.events:
        payload = _ts(event.payload, "    ") if event.typed else "any"
        flag = "(untyped: no declared model)" if not event.typed else ""
        comment = " ".join(part for part in (event.summary.replace("*/", "* /"), flag) if part)
        if comment:
            out.append(f"  /** {comment} */")
        out.append(f"  {json.dumps(event.topic)}: {payload};")
    out.append("}\n")
    tree = _group_tree(contract)
    auth = contract.auth_strategy if any(e.name == contract.auth_strategy for e in contract.strategies) else None
    out.append(_RUNTIME.replace("__AUTH__", json.dumps(auth)))
    out.append(f"/** One method per strategy, grouped by domain. */\nexport interface AppMethods {_interface(tree, '')}\n")
    out.append(
        "/** A typed client over a flamigo.js client: methods per strategy, typed `request`/`on`, and `raw`. */\n"
        "export type AppClient<C extends FlamigoLike = FlamigoLike> = AppMethods & TypedMethods & { raw: C };\n\n"
        "export function createClient<C extends FlamigoLike>(client: C): AppClient<C> {\n"
        "  const method = (topic: string) => (payload?: unknown, options?: RequestOptions) =>\n"
        "    client.request(topic, payload, options);\n"
        "  const methods = " + _implementation(tree, "  ") + ";\n"
        "  const typed: TypedMethods = {\n"
        "    request: (topic, ...args) => client.request(topic, ...args),\n"
        "    on: (topic, handler) => client.on(topic, handler as (payload: unknown, topic: string) => void),\n"
        "  };\n"
        "  return Object.assign(methods as unknown as AppMethods, typed, { raw: client });\n"
        "}\n"
    )
    return "\n".join(out)


_RUNTIME = """export type StrategyName = keyof Strategies;
export type ClientTopic = keyof ClientEvents;
export type PayloadOf<K extends StrategyName> = Strategies[K]["payload"];
export type ReplyOf<K extends StrategyName> = Strategies[K]["reply"];
export type ErrorStatusOf<K extends StrategyName> = Strategies[K]["errors"];
/** The authentication strategy (null when the app has none): call it first; until then
 * every other non-public strategy answers 401. */
export const AUTH_STRATEGY: StrategyName | null = __AUTH__;

/** Per-request options of flamigo.js (`timeout` in milliseconds). */
export interface RequestOptions {
  timeout?: number;
}

/** The arguments of a request: the payload is optional only when the strategy takes none. */
export type Args<K extends StrategyName> = undefined extends PayloadOf<K>
  ? [payload?: PayloadOf<K>, options?: RequestOptions]
  : [payload: PayloadOf<K>, options?: RequestOptions];

/** What this module needs of a flamigo.js client (`FlamigoClient`). */
export interface FlamigoLike {
  request(topic: string, payload?: any, options?: any): Promise<any>;
  on(topic: string, handler: (payload: any, topic: string) => void): () => void;
}

/** `request` and `on`, typed by the contract. */
export interface TypedMethods {
  request<K extends StrategyName>(topic: K, ...args: Args<K>): Promise<ReplyOf<K>>;
  on<T extends ClientTopic>(topic: T, handler: (payload: ClientEvents[T], topic: T) => void): () => void;
}

/** A flamigo.js client whose `request` and `on` are typed: `Typed<FlamigoClient>`. */
export type Typed<C extends FlamigoLike> = Omit<C, "request" | "on"> & TypedMethods;

/** An error reply of strategy `K` (flamigo.js's `FlamigoError`; status 0 for client-side failures). */
export interface StrategyError<K extends StrategyName> extends Error {
  topic: K;
  status: ErrorStatusOf<K> | 0;
  code: string;
  fieldErrors: Array<{ field: string; error: string }> | null;
  trace?: string;
}

/** Whether `error` is the rejection of a request to `topic` (narrows its `status`). */
export function isStrategyError<K extends StrategyName>(error: unknown, topic: K): error is StrategyError<K> {
  return (
    error instanceof Error &&
    (error as { topic?: unknown }).topic === topic &&
    typeof (error as { status?: unknown }).status === "number"
  );
}
"""
