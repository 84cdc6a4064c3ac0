"""Pillow's process-wide settings, made once, when an image module is imported.

- No decompression-bomb check of Pillow's own: `relight.core.image_structure` bounds every image's
  pixels before Pillow allocates any, with our limit (`RELIGHT_MAX_INPUT_PIXELS`) and a clear
  message, so Pillow's guard would only fire on sizes we already refuse.
- Pillow's warnings about a client's damaged file (a bad EXIF tag, an odd chunk) are not shown:
  what matters is whether the image decodes, and that is an error or it is not.

Both are settings of the whole process, on purpose. A `warnings.catch_warnings()` block around
each decode looks narrower but is not thread-safe: decodes run in worker threads, and a block's
exit puts back the filters it saw on entry, undoing whatever another thread set meanwhile. That
once turned a warning FastAPI hides while it builds a route (inside its own block) into a failed
request. A filter added once, here, is never undone.
"""

from __future__ import annotations

import warnings

from PIL import Image

# Warnings raised by Pillow's own modules (the ones it attributes to its callers, such as its
# deprecations, still show).
PILLOW_MODULES = r"PIL\."


def configure_pillow() -> None:
    """Apply the settings (idempotent: adding the same filter twice keeps one)."""
    Image.MAX_IMAGE_PIXELS = None
    warnings.filterwarnings("ignore", module=PILLOW_MODULES)
