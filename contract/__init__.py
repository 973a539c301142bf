"""What the router, the worker, the snapshot files and the CLI agree on.

names    the tenant-name rule, the one place it is written
worker   the router/worker wire contract: the worker spec and the control-channel messages
logs     the structured log line both processes write
serving  the one adapter over uvicorn's private API (admin listener and tenant workers)

A leaf package: it imports only the standard library (uvicorn lazily, in `serving`) and
nothing of the project, so `switchboard`, `tenant`, `snapshots` and `ops` can all import it
without importing each other. That is what lets a worker run another code version than the
router: the two share these definitions, never each other's internals.
"""
