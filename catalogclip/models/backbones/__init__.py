"""Backbones: `tiny` (tests, demo), `twotower` (offline default), `openclip:<model>[:<weights>]`.

Importing this package registers them in `base.BACKBONES`; heavy libraries (transformers,
open_clip) are imported only when a backbone is built.
"""
from catalogclip.models.backbones import openclip, tiny, twotower  # noqa: F401  (registration)
