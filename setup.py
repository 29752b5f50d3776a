"""flamigo_actors: an actor-system runtime for realtime Flask apps."""

from pathlib import Path

from setuptools import find_packages, setup

README = Path(__file__).with_name("README.md")

# The benchmark's peers and tools (scripts/bench.py); the test extra includes
# them because tests/test_bench_smoke.py runs the benchmark's quick mode.
BENCH = [
    "flask-socketio>=5.3",
    "matplotlib>=3.7",
    "psutil>=5.9",
    "py-spy>=0.3",
]

setup(
    name="flamigo-actors",
    version="0.1.0",
    description="Actor-per-connection realtime runtime for Flask: strategies, topic bus, WebSocket",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["flamigo_actors", "flamigo_actors.*"]),
    package_data={
        "flamigo_actors": ["static/*", "py.typed"],
    },
    # Every distribution flamigo_actors imports (tests/test_dependencies.py checks
    # this list against the imports). An upper bound where we rely on internals,
    # below the next release that may break them, as tested: the engine copies
    # Pykka's private actor loop and overrides its private hooks; the transport
    # overrides pywsgi's and gevent-websocket's handler methods; the engine
    # parents raw greenlets on gevent's hub; routes use Werkzeug's websocket rules.
    install_requires=[
        "pykka>=4.1,<4.6",
        "gevent>=24.2,<26.10",
        "gevent-websocket==0.10.1",
        "greenlet>=3.0,<4",
        "flask>=3.0,<4",
        "werkzeug>=3.0,<4",
        "blinker>=1.7",
        "orjson>=3.9",
        "pydantic>=2.5,<3",
        "itsdangerous>=2.1",
        # GET /metrics (FLAMIGO_METRICS), multiprocess mode with --workers N
        "prometheus_client>=0.20,<1",
    ],
    extras_require={
        "redis": ["redis>=5.0"],
        # --workers N: gunicorn runs the worker processes, which share the Redis backplane.
        # serving/workers.py overrides gunicorn worker methods (load_wsgi, run, handle_quit).
        "workers": ["gunicorn>=22,<28", "redis>=5.0"],
        "test": [
            "pytest>=8",
            "hypothesis>=6.90",
            "websocket-client>=1.7",
            "requests>=2.31",
            "psutil>=5.9",
            "redis>=5.0",
            "gunicorn>=22,<28",
            "playwright>=1.40",
            # runs the Autobahn TestSuite's cases (tests/test_autobahn.py)
            "kosoku>=0.1,<0.2",
            # --format yaml (tests/test_contract_tools.py)
            "PyYAML>=6",
            *BENCH,
        ],
        "bench": BENCH,
        # flamigo-actors schema --format yaml
        "contract": ["PyYAML>=6"],
    },
    entry_points={"console_scripts": ["flamigo-actors=flamigo_actors.serving.cli:main"]},
    classifiers=[
        "Framework :: Flask",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "License :: OSI Approved :: MIT License",
    ],
)
