"""Serving: the WSGI server, the command line, gunicorn workers.

Imports nothing: gevent's monkey-patching must be able to run first.
"""
