"""catalogclip: CLIP-style cross-modal product retrieval for e-commerce catalogs."""
__version__ = "0.1.0"
