"""Backends: where a job's pixels are made, and every rule about choosing one.

`protocol` (what a backend is to the runner), `attempts` (the attempt log on the job),
`availability` (which backends are available), `routing` (which one runs a job, retry or fail
over), `backoff` (when to try again); the backends themselves: `local`, `segmind`, `gpu` (whose
node dispatch lives in `relight.nodes`). Nothing is imported here, so that a light user (the
webhooks' backoff) does not load the backends.
"""
