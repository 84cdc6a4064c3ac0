"""The arq worker: runs relight jobs on the configured backends."""
