"""The ``flamigo-actors`` command: run an app; attach a debug shell to a running one.

    flamigo-actors run MODULE:FACTORY [--host H] [--port P] [--redis URL [--redis-cluster]] [--workers N] [--debug]
                                      [--backdoor [HOST:]PORT]
    flamigo-actors shell --connect HOST:PORT
    flamigo-actors schema MODULE:FACTORY [--format asyncapi|yaml|jsonschema|typescript]
                                         [-o FILE | --check FILE] [--server HOST[:PORT]]
    flamigo-actors new NAME [--directory DIR]

gevent's monkey-patching is applied first, before anything imports socket,
threading, pykka or flask (the package's ``__init__`` imports nothing eagerly
for this reason).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after monkey-patching, on purpose
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from .loading import load_app  # noqa: E402 - imports nothing else of the package

__all__ = ["load_app", "main"]

_log = logging.getLogger("flamigo_actors.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flamigo-actors", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve an application")
    run.add_argument("target", help="MODULE:FACTORY, e.g. app:create_app")
    run.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    run.add_argument("--redis", metavar="URL", help="Redis URL of the cross-process backplane")
    run.add_argument("--redis-cluster", action="store_true",
                     help="the --redis URL names one node of a Redis Cluster (FLAMIGO_REDIS_CLUSTER)")
    run.add_argument(
        "--backplane", choices=("stream", "interest"),
        help="backplane mode with --redis: stream (default: every process reads every event) or "
        "interest (a process reads only the topics its subscribers match)",
    )
    run.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="worker processes on one port (gunicorn; N > 1 needs --redis)",
    )
    run.add_argument("--debug", action="store_true", help="send error traces to clients (never in production)")
    run.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    run.add_argument(
        "--backdoor", metavar="[HOST:]PORT", type=_backdoor_address,
        help="open a debug shell in the server (loopback only; HOST defaults to 127.0.0.1)",
    )
    shell = commands.add_parser("shell", help="attach a Python shell to a server started with --backdoor")
    shell.add_argument(
        "--connect", metavar="HOST:PORT", required=True, type=_shell_address,
        help="the server's --backdoor address (statements are read from stdin when it is not a terminal)",
    )
    shell.add_argument("--log-level", default="WARNING", help=argparse.SUPPRESS)
    schema = commands.add_parser("schema", help="print the app's contract (AsyncAPI 3.0, JSON Schema, TypeScript)")
    schema.add_argument("target", help="MODULE:FACTORY, e.g. app:create_app")
    schema.add_argument(
        "--format", default="asyncapi", choices=("asyncapi", "yaml", "jsonschema", "typescript"),
        help="asyncapi (JSON, default), yaml (the AsyncAPI document as YAML), jsonschema, typescript",
    )
    output = schema.add_mutually_exclusive_group()
    output.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    output.add_argument(
        "--check", metavar="FILE",
        help="exit 1 when FILE differs from what would be generated (a stale committed contract)",
    )
    schema.add_argument(
        "--server", default="localhost:8080", metavar="HOST[:PORT]",
        help="the WebSocket server named in the AsyncAPI document (default localhost:8080)",
    )
    schema.add_argument("--log-level", default="WARNING", help=argparse.SUPPRESS)
    new = commands.add_parser("new", help="create a ready project: app, typed strategy, event, actor, tests")
    new.add_argument("name", help="the project's name: a Python package name (letters, digits, '_')")
    new.add_argument("--directory", metavar="DIR", help="where to create it (default ./NAME)")
    new.add_argument("--log-level", default="WARNING", help=argparse.SUPPRESS)
    return parser


def _shell_address(text: str) -> tuple[str, int]:
    from ..ops.shell import parse_address

    try:
        return parse_address(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _backdoor_address(text: str) -> tuple[str, int]:
    from ..ops.shell import BackdoorError, require_loopback

    address = _shell_address(text)
    try:
        require_loopback(address[0])
    except BackdoorError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return address


def _set_env(args: argparse.Namespace) -> None:
    # Flags travel as FLAMIGO_* environment variables: the settings read them,
    # and worker processes inherit them.
    if args.redis:
        os.environ["FLAMIGO_REDIS_URL"] = args.redis
    if args.redis_cluster:
        os.environ["FLAMIGO_REDIS_CLUSTER"] = "true"
    if args.backplane:
        os.environ["FLAMIGO_REDIS_BACKPLANE"] = args.backplane
    if args.debug:
        os.environ["FLAMIGO_DEBUG"] = "true"


def _run(args: argparse.Namespace) -> int:
    from ..backplane.streams import RedisUnavailable
    from .server import serve

    _set_env(args)
    if args.workers < 1:
        print(f"error: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.workers > 1 and args.backdoor is not None:
        print(
            "error: --backdoor opens one shell in one process; it cannot be combined with "
            "--workers (run a single-process server to debug)",
            file=sys.stderr,
        )
        return 2
    if args.workers > 1:
        try:
            from .workers import exec_arbiter
        except ImportError as err:
            print(
                f"error: --workers needs gunicorn ({err}): pip install 'flamigo-actors[workers]'",
                file=sys.stderr,
            )
            return 2
        return exec_arbiter(args.target, args.host, args.port, args.workers, args.log_level)
    app = load_app(args.target)
    from .logs import log_format, watch_app

    watch_app(app)

    def ready(server: Any) -> None:
        host, port = server.address[:2]
        banner = (
            f"flamigo_actors: serving {args.target} on http://{host}:{port} "
            f"(WebSocket at {app.extensions['flamigo'].settings.ws_path})"
        )
        if log_format() == "json":  # every line of a JSON log is JSON
            _log.info("%s", banner)
        else:
            print(banner, file=sys.stderr, flush=True)

    from ..ops.shell import BackdoorError

    try:
        serve(app, args.host, args.port, ready=ready, backdoor=args.backdoor)
    except BackdoorError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port}: {err.strerror or err}", file=sys.stderr)
        return 1
    except RedisUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``flamigo-actors`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    from .logs import setup

    try:
        setup(str(args.log_level))  # FLAMIGO_LOG_FORMAT; secrets never written
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "run":
        return _run(args)
    if args.command == "shell":
        from ..ops.shell import attach

        return attach(args.connect)
    if args.command == "schema":
        from .contract_cli import schema_command

        return schema_command(args.target, args.format, args.output, args.check, args.server)
    if args.command == "new":
        from .scaffold import ScaffoldError, create_project

        try:
            path = create_project(args.name, args.directory)
        except ScaffoldError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"created {path}: cd {path} && pip install -e '.[test]' && pytest", file=sys.stderr)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
