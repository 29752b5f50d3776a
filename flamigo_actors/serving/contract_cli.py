"""``flamigo-actors schema``: print, write or check an application's contract.

The contract is generated from the app the target's factory builds (nothing
is served, nothing started): ``asyncapi`` (the AsyncAPI 3.0 document as JSON),
``yaml`` (the same as YAML; needs PyYAML, ``pip install 'flamigo-actors[contract]'``),
``jsonschema`` (the bare JSON Schemas) or ``typescript`` (the typed client
module). Output is deterministic, so ``--check FILE`` can tell a committed
copy is stale: it exits 1 with a short diff and the command that regenerates
it; a missing FILE is stale too. Exit status 2 for a bad target or a missing
dependency, with a message saying what to do.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path

from .loading import load_app

__all__ = ["render", "schema_command"]


def render(target: str, fmt: str, server: str = "localhost:8080") -> str:
    """The contract of the app ``target`` names, in format ``fmt``, as text.

    Raises:
        SystemExit: the target cannot be loaded, or PyYAML is missing for ``yaml``.
        ValueError: a declared model has no JSON Schema.
    """
    from ..ops.asyncapi import asyncapi_document
    from ..ops.schemas import json_schema_document
    from ..ops.typescript import typescript_module

    flamigo = load_app(target).extensions["flamigo"]
    if fmt == "typescript":
        return typescript_module(flamigo, source=target)
    if fmt == "jsonschema":
        return json.dumps(json_schema_document(flamigo), indent=2, ensure_ascii=False) + "\n"
    document = asyncapi_document(flamigo, server=server)
    if fmt == "yaml":
        try:
            import yaml
        except ImportError:
            raise SystemExit(
                "error: --format yaml needs PyYAML: pip install 'flamigo-actors[contract]' (or PyYAML)"
            ) from None
        return str(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100))
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def schema_command(
    target: str, fmt: str, output: str | None, check: str | None, server: str
) -> int:
    """Run ``flamigo-actors schema``; returns the exit status."""
    try:
        text = render(target, fmt, server)
    except SystemExit as err:
        print(err, file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if check is not None:
        path = Path(check)
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == text:
            return 0
        diff = list(
            difflib.unified_diff(
                current.splitlines(), text.splitlines(), f"{check} (committed)", "generated", lineterm="", n=1
            )
        )
        shown = "\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else "")
        print(
            f"error: {check} is {'missing' if not path.exists() else 'stale'}: the app's contract changed.\n"
            f"{shown}\nregenerate it: flamigo-actors schema {target} --format {fmt} -o {check}",
            file=sys.stderr,
        )
        return 1
    if output is not None:
        Path(output).write_text(text, encoding="utf-8")
        return 0
    sys.stdout.write(text)
    return 0
