"""Loading the engine a node serves (`RELIGHT_NODE_ENGINE`)."""

from __future__ import annotations

from inference.engines.base import RelightEngine
from inference.node.metrics import PassMetrics
from inference.node.settings import NodeSettings


def load_engine(settings: NodeSettings) -> RelightEngine:
    """The configured engine, ready to render; the IC-Light engine (and torch) only on demand."""
    if settings.engine == "classic":
        from inference.engines.classic import ClassicEngine

        return ClassicEngine()
    if settings.model_dir is None:
        raise SystemExit("RELIGHT_NODE_MODEL_DIR must name the model folder for the iclight engine")
    # Imported here: torch and diffusers load only on nodes that serve IC-Light.
    from inference.engines.iclight import ICLightEngine

    engine: RelightEngine = ICLightEngine.from_dir(
        settings.model_dir,
        device=settings.device,
        matting_model=settings.matting_model,
        max_batch_images=settings.max_batch,
        batch_window_s=settings.batch_window_ms / 1000,
        batch_observer=PassMetrics(),
        deterministic=settings.deterministic,
    )
    return engine


def engine_device(engine: RelightEngine) -> str:
    """Where the engine computes: its `device` when it has one, else the CPU."""
    return str(getattr(engine, "device", "cpu"))
