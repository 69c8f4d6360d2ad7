"""`catalogclip demo`: the main job on the built-in synthetic catalog."""
from __future__ import annotations
