"""Loading the engine a node serves (`RELIGHT_NODE_ENGINE`)."""

from __future__ import annotations

import logging
from time import perf_counter

from inference.engines.base import RelightEngine
from inference.node.metrics import PassMetrics
from inference.node.settings import NodeSettings

logger = logging.getLogger(__name__)


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


def warm_up(engine: RelightEngine) -> None:
    """Run the engine's warm-up, when it has one (IC-Light: a tiny render per model)."""
    warm = getattr(engine, "warm_up", None)
    if warm is not None:
        started = perf_counter()
        warmed = warm()
        logger.info("warmed up %s in %.1f s", warmed, perf_counter() - started)
