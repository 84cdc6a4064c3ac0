"""Backends: where a job's pixels are made, and every rule about choosing one.

`render_backend` (what a backend is to the runner: the `RenderBackend` protocol, its input and
result), `attempts` (the attempt log on the job), `availability` (which backends are
available), `routing` (which one runs a job, retry or fail over); the backends themselves:
`local` and `segmind` here, `gpu` in `relight.nodes` (which builds it on this package, never
the other way round). Nothing is imported here, so that a light user does not load the
backends.
"""
