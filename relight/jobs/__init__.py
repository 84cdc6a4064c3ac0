"""Relight jobs: submission, the record and its views, execution, completion events."""
