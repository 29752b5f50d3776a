"""Operations: inspection snapshots, the debug shell, the dashboard.

Imports nothing: gevent's monkey-patching must be able to run first.
"""
