"""Flask integration: the extension, the in-memory test client.

Imports nothing: gevent's monkey-patching must be able to run first.
"""
