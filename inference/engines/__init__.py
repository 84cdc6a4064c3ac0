"""Relighting engines: `classic` (fast CPU, no diffusion) and `iclight` (IC-Light fc, torch)."""
