"""Relighting engines and the GPU inference node service."""
