"""Carrying events between processes (Redis Streams).

Imports nothing: gevent's monkey-patching must be able to run first.
"""
