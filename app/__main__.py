"""``python -m app [--host H] [--port P] [--redis URL] [--workers N]``: serve the demo chat."""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402 - after monkey-patching, on purpose

from flamigo_actors.serving.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", "app:create_app", *sys.argv[1:]]))
