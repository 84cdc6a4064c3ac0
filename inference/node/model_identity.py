"""What a node tells about its weights: the model folder's digest and the matting model.

Checked and computed once at start-up: a folder with a problem (a missing or truncated file,
a size that differs from its manifest, offsets that do not fit the UNet) stops the node before
it loads anything, with every problem in the log. Hashing every file at each start would take
a while for a 5 GB folder, so the start checks sizes and structure only unless
`RELIGHT_NODE_VERIFY_HASHES` is set; `relight-models check DIR` hashes everything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from inference.model_folder import check_model_folder, model_digest
from inference.node.settings import NodeSettings

logger = logging.getLogger(__name__)


class ModelFolderRefused(RuntimeError):
    """The model folder has problems; the node does not start."""


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """`digest`: sha256 of the folder's manifest.json (None without a model folder, as for the
    classic engine); `matting`: the matting model's name, None without one."""

    digest: str | None = None
    matting: str | None = None


def checked_model_digest(settings: NodeSettings) -> str | None:
    """The model folder's digest after checking it; ModelFolderRefused listing its problems."""
    if settings.engine != "iclight" or settings.model_dir is None:
        return None
    problems, notes = check_model_folder(settings.model_dir, hashes=settings.verify_hashes)
    for note in notes:
        logger.info("model folder %s: %s", settings.model_dir, note)
    if problems:
        for problem in problems:
            logger.error("model folder %s: %s", settings.model_dir, problem)
        raise ModelFolderRefused(
            f"model folder {settings.model_dir} has {len(problems)} problem(s) "
            "(see `relight-models check`): " + "; ".join(problems)
        )
    return model_digest(settings.model_dir)


def matting_name(engine: object, matting_model: Path | None) -> str | None:
    """The engine's own name for its matting model (`matting_name`, e.g. "rmbg-1.4"); else the
    configured program's file name when the engine holds one; else None."""
    named = getattr(engine, "matting_name", None)
    if isinstance(named, str) and named:
        return named
    if getattr(engine, "matting", None) is not None and matting_model is not None:
        return matting_model.name
    return None
