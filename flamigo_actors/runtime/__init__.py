"""The actor runtime: the Pykka engine, strategies and calls, the event bus, listeners, signals.

Imports nothing: gevent's monkey-patching must be able to run first.
"""
