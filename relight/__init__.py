"""Relight core: settings, parameters, images, data and the job life cycle.

Imported by the three deployables (api, worker, inference); it never imports FastAPI or arq.
"""

__version__ = "0.1.0"
