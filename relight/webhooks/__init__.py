"""Webhooks: signed (Standard Webhooks), retried, recorded delivery of request events."""
