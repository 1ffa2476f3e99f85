"""The command engine: every command a device's product declares, checked, queued and run.

`params` checks parameters against the product, `builtin` holds the commands the daemon runs
itself (`ping`, `resync`), `answers` records and answers each status, and `engine` runs each
device's commands one at a time, in arrival order, under a timeout (docs/protocol.md).
"""
