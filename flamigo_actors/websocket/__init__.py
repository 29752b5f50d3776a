"""The WebSocket interface: framing, the gevent-websocket adapter, the JSON protocol, the outbound path, connections.

Imports nothing: gevent's monkey-patching must be able to run first.
"""
