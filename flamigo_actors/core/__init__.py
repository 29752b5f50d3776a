"""The bottom layer: errors, identities, topics, events, settings, rate limiting. No Flask, no gevent-websocket, no actors.

Imports nothing: gevent's monkey-patching must be able to run first.
"""
