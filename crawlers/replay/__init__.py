"""A replay of the sound sites on 127.0.0.1, for tests and the offline demo.

``with serve() as (app, base_url): ...`` starts a real HTTP server; every module in this package
whose name does not start with ``_`` is a route plugin (``register(app)``), one per source, so a
new source adds one file here and edits nothing else. See ``_server.py`` for faults and counters.
"""
from ._server import (FAULT_KINDS, Catalogue, FaultConfig, Reply, ReplayApp, Request,
                      discover_plugins, serve)

__all__ = ["FAULT_KINDS", "Catalogue", "FaultConfig", "Reply", "ReplayApp", "Request",
           "discover_plugins", "serve"]
