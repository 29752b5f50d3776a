"""The contract as tools see it: the official AsyncAPI parser, a JSON Schema 2020-12 validator,
``tsc --strict``, the demo UI type-checked against the generated client, ``--check``, the scaffold.

The node tools are pinned in tests/contract/package.json (installed once with ``npm ci``);
under CI=true a missing node or npm fails these tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support import need_binary

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tests" / "contract"
TSC = TOOLS / "node_modules" / "typescript" / "bin" / "tsc"


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, after ``npm ci`` installed the pinned tools (once)."""
    executable = need_binary("node")
    modules = TOOLS / "node_modules"
    if not all((modules / p / "package.json").is_file() for p in ("@asyncapi/parser", "typescript", "ajv")):
        npm = need_binary("npm")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=TOOLS, check=True, timeout=600)
    return executable


def schema(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``flamigo-actors schema ...`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "flamigo_actors", "schema", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def generated(fmt: str) -> str:
    proc = schema("app:create_app", "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def parse_asyncapi(node: str, path: Path) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [node, str(TOOLS / "validate_asyncapi.mjs"), str(path)],
        cwd=TOOLS, capture_output=True, text=True, timeout=120,
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def tsc(node: str, project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node, str(TSC), "-p", str(project)], cwd=project, capture_output=True, text=True, timeout=300
    )


# -- AsyncAPI ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["asyncapi", "yaml"])
def test_the_demo_contract_is_valid_asyncapi_3_with_every_strategy_and_event(
    node: str, tmp_path: Path, fmt: str
) -> None:
    text = generated(fmt)
    path = tmp_path / ("asyncapi.json" if fmt == "asyncapi" else "asyncapi.yaml")
    path.write_text(text)
    status, parsed = parse_asyncapi(node, path)
    assert status == 0 and parsed["errors"] == [], parsed["errors"]
    assert parsed["version"] == "3.0.0"
    from app import create_app

    flamigo = create_app({"TESTING": True}).extensions["flamigo"]
    operations = {op["title"]: op for op in parsed["operations"]}
    for strategy in flamigo.strategies:
        operation = operations[strategy.name]  # every strategy, whoever registered it
        assert operation["action"] == "receive"
        assert operation["reply"] == [strategy.name, "error"]
        assert operation["correlation"] == ["$message.payload#/ackId"]
    for event in flamigo.strategies.events:
        assert operations[event.topic]["action"] == "send"
    if fmt == "yaml":
        assert yaml.safe_load(text) == json.loads(generated("asyncapi"))


def test_the_parser_refuses_a_broken_document(node: str, tmp_path: Path) -> None:
    document = json.loads(generated("asyncapi"))
    operation = next(iter(document["operations"].values()))
    operation["action"] = "push"  # neither send nor receive
    del document["info"]["version"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(document))
    status, parsed = parse_asyncapi(node, path)
    assert status == 1 and parsed["errors"]


# -- JSON Schema ------------------------------------------------------------------------------


def test_the_json_schemas_validate_payloads_as_the_server_does(node: str, tmp_path: Path) -> None:
    (tmp_path / "schemas.json").write_text(generated("jsonschema"))
    send, chat = "/strategies/app::rooms:send/request", "/events/chat:message/payload"
    cases = [
        (send, {"room": "lobby", "text": "hi"}, True),
        (send, {"room": "lob by", "text": "hi"}, False),
        (send, {"room": "lobby"}, False),
        ("/strategies/app::rooms:history/reply",
         {"room": "r", "messages": [{"user": "u", "text": "t", "ts": 1}], "owner": "n"}, True),
        ("/strategies/app::rooms:history/reply", {"room": "r", "messages": [{"user": "u"}], "owner": "n"}, False),
        (chat, {"room": "lobby", "user": "ada", "text": "hi", "ts": 1.5}, True),
        (chat, {"room": "lobby", "user": "ada", "text": "hi"}, False),
        ("/error", {"message": "invalid payload", "status": 422, "fieldErrors": [{"field": "room", "error": "x"}]}, True),
        ("/strategies/app::echo/request", {"anything": [1, "goes"]}, True),
    ]
    (tmp_path / "cases.json").write_text(json.dumps([{"pointer": p, "data": d} for p, d, _ in cases]))
    proc = subprocess.run(
        [node, str(TOOLS / "validate_jsonschema.mjs"), str(tmp_path / "schemas.json"), str(tmp_path / "cases.json")],
        cwd=TOOLS, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["valid"] for r in results] == [valid for _, _, valid in cases], results


# -- TypeScript -------------------------------------------------------------------------------

USAGE = """\
import { createClient, isStrategyError, type FlamigoLike, type ChatMessagePayload } from "./contract";

declare const raw: FlamigoLike;
const client = createClient(raw);

export async function main(): Promise<number> {
  const sent = await client.rooms.send({ room: "lobby", text: "hi" });
  const history = await client.request("app::rooms:history", { room: "lobby" });
  const texts: string[] = history.messages.map((m) => m.text);
  const stop = client.on("chat:message", (p: ChatMessagePayload) => void p.ts.toFixed(1));
  stop();
  const { rooms } = await client.rooms.list();
  await client.echo({ any: "thing" });
  try {
    await client.rooms.history({ room: "x" });
  } catch (error) {
    if (isStrategyError(error, "app::rooms:history")) {
      const status: 0 | 400 | 401 | 422 | 429 | 500 | 503 | 504 = error.status;
      return status;
    }
  }
  return (sent.sent ? 1 : 0) + texts.length + rooms.length;
}
"""

WRONG = {
    "a wrongly typed payload": ('client.rooms.send({ room: "lobby", text: 5 });', "TS2322"),
    "a missing field": ('client.rooms.send({ room: "lobby" });', "TS2345"),
    "an unknown strategy": ('client.request("app::rooms:shout", {});', "TS2345"),
    "a wrong reply field": ('client.rooms.send({ room: "l", text: "t" }).then((r) => r.delivered);', "TS2339"),
    "a wrong push payload": ('client.on("chat:message", (p) => p.txt);', "TS2551"),
}


def write_ts_project(root: Path, files: dict[str, str], compiler: dict[str, Any] | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    options = {
        "strict": True, "noEmit": True, "target": "es2022", "module": "es2022",
        "moduleResolution": "bundler", "lib": ["es2022", "dom"], "skipLibCheck": True, **(compiler or {}),
    }
    (root / "tsconfig.json").write_text(json.dumps({"compilerOptions": options, "files": list(files)}))


def test_the_typescript_client_compiles_strict_and_types_calls_replies_pushes_and_errors(
    node: str, tmp_path: Path
) -> None:
    module = generated("typescript")
    written = tmp_path / "contract.ts"
    assert schema("app:create_app", "--format", "typescript", "-o", str(written)).returncode == 0
    assert written.read_text() == module
    write_ts_project(tmp_path / "ok", {"contract.ts": module, "use.ts": USAGE})
    proc = tsc(node, tmp_path / "ok")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for case, (line, code) in WRONG.items():
        project = tmp_path / case.replace(" ", "_")
        write_ts_project(project, {"contract.ts": module, "use.ts": USAGE + line + "\n"})
        proc = tsc(node, project)
        assert proc.returncode != 0, f"{case} compiled"
        assert f"use.ts({USAGE.count(chr(10)) + 1}," in proc.stdout and code in proc.stdout, proc.stdout


def demo_ui_project(root: Path, module: str, chat_js: str) -> None:
    # flamigo.js's own JSDoc types the client; the generated module types request() and on().
    shim = (
        'import type { FlamigoClient } from "../flamigo_client.js";\n'
        'import type { Typed } from "../contract";\n'
        "export function connect(url?: string, options?: object): Typed<FlamigoClient>;\n"
    )
    files = {
        "contract.ts": module,
        "flamigo_client.js": (ROOT / "flamigo_actors" / "static" / "flamigo.js").read_text(),
        "_flamigo/flamigo.d.ts": shim,
        "chat.js": chat_js,
    }
    # Only files marked // @ts-check are checked (chat.js); flamigo.js is read for its types.
    write_ts_project(root, files, {
        "strict": False, "allowJs": True, "checkJs": False, "lib": ["es2022", "dom", "dom.iterable"],
        "paths": {"/_flamigo/*": ["./_flamigo/*"]},
    })
    (root / "tsconfig.json").write_text(
        json.dumps({**json.loads((root / "tsconfig.json").read_text()), "files": ["chat.js"]})
    )


def test_the_demo_ui_is_type_checked_against_the_generated_client(node: str, tmp_path: Path) -> None:
    module = generated("typescript")
    chat_js = (ROOT / "app" / "static" / "chat.js").read_text()
    assert chat_js.startswith("// @ts-check")
    demo_ui_project(tmp_path / "ok", module, chat_js)
    proc = tsc(node, tmp_path / "ok")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    call = 'request("app::rooms:send", { room, text })'
    assert call in chat_js
    demo_ui_project(tmp_path / "wrong", module, chat_js.replace(call, 'request("app::rooms:send", { room, txt: text })'))
    proc = tsc(node, tmp_path / "wrong")
    assert proc.returncode != 0 and "'txt' does not exist in type 'SendPayload'" in proc.stdout, proc.stdout


EDGE_USAGE = """\
import { createClient, type FlamigoLike, type Everything, AUTH_STRATEGY } from "./contract";

declare const raw: FlamigoLike;
const client = createClient(raw);

export async function main(everything: Everything): Promise<number> {
  const back: Everything = await client.everything(everything);
  const [x, y]: [number, number] = back.point;
  const color: "red" | "blue" = back.color;
  const children: string[] = (back.tree.children ?? []).map((node) => node.name);
  const loose: unknown = back.loose["whatever"];
  const tags: number = back.tags["any"] ?? 0;
  const strings: string[] = await client.request("app::raw");  // no method: request() reaches it
  const leaf: number = await client.rooms();
  const sent: boolean = await client.request("app::rooms:send");
  const pair = await client.multiWord.doIt();
  client.on("tree:changed", (node) => node.children?.length);
  client.on("anything:goes", (payload) => payload.whatever);
  const same: FlamigoLike = client.raw;
  void [loose, same, AUTH_STRATEGY === null, color];
  return x + y + children.length + tags + strings.length + leaf + (sent ? 1 : 0) + pair.left;
}
"""


def test_the_generators_map_every_model_shape_and_name_clash(node: str, tmp_path: Path) -> None:
    env_root = ROOT / "tests"
    document = schema("contract_edge_app:create_app", cwd=env_root)
    assert document.returncode == 0, document.stderr
    (tmp_path / "edge.json").write_text(document.stdout)
    status, parsed = parse_asyncapi(node, tmp_path / "edge.json")
    assert status == 0, parsed["errors"]
    lifecycle = json.loads(document.stdout)["channels"]["websocket"]["x-flamigo-lifecycle"]
    assert lifecycle["authRequired"] is False and "authStrategy" not in lifecycle
    module = schema("contract_edge_app:create_app", "--format", "typescript", cwd=env_root)
    assert module.returncode == 0, module.stderr
    assert "export const AUTH_STRATEGY: StrategyName | null = null;" in module.stdout
    write_ts_project(tmp_path / "edge", {"contract.ts": module.stdout, "use.ts": EDGE_USAGE})
    proc = tsc(node, tmp_path / "edge")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    write_ts_project(tmp_path / "clash", {"contract.ts": module.stdout, "use.ts": EDGE_USAGE + "client.raw();\n"})
    assert tsc(node, tmp_path / "clash").returncode != 0  # raw is the client, not the strategy


# -- keeping it in CI: --check ----------------------------------------------------------------


def test_check_passes_for_a_current_contract_and_fails_for_a_stale_or_missing_one(tmp_path: Path) -> None:
    current = tmp_path / "asyncapi.json"
    current.write_text(generated("asyncapi"))
    assert schema("app:create_app", "--check", str(current)).returncode == 0
    document = json.loads(current.read_text())
    document["info"]["title"] = "an older app"
    current.write_text(json.dumps(document, indent=2) + "\n")
    proc = schema("app:create_app", "--check", str(current))
    assert proc.returncode == 1
    assert "is stale" in proc.stderr and "an older app" in proc.stderr
    assert f"flamigo-actors schema app:create_app --format asyncapi -o {current}" in proc.stderr
    proc = schema("app:create_app", "--format", "typescript", "--check", str(tmp_path / "missing.ts"))
    assert proc.returncode == 1 and "is missing" in proc.stderr


def test_a_bad_target_is_exit_status_2_with_a_message(tmp_path: Path) -> None:
    proc = schema("no_such_module:create_app", cwd=tmp_path)
    assert proc.returncode == 2 and "cannot import 'no_such_module'" in proc.stderr
    assert proc.stdout == ""


# -- the scaffold -----------------------------------------------------------------------------


def test_new_creates_a_project_whose_tests_pass_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flamigo_actors", "new", "notes_app"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    project = tmp_path / "notes_app"
    for name in ("pyproject.toml", "README.md", "notes_app/app.py", "tests/test_app.py", "contract/asyncapi.json"):
        assert (project / name).is_file(), name
    readme = (project / "README.md").read_text()
    assert "flamigo-actors run notes_app.app:create_app" in readme and "pip install -e '.[test]' && pytest" in readme
    again = subprocess.run(
        [sys.executable, "-m", "flamigo_actors", "new", "notes_app"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert again.returncode == 2 and "exists already" in again.stderr
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for target in (str(ROOT), f"{project}[test]"):
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-e", target],
            capture_output=True, text=True, timeout=900, env=env,
        )
        assert install.returncode == 0, install.stderr[-3000:]
    tests = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project, capture_output=True, text=True, timeout=600, env=env,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
    assert "4 passed" in tests.stdout
    shutil.rmtree(venv, ignore_errors=True)
