"""Backends the worker can dispatch a job to."""
