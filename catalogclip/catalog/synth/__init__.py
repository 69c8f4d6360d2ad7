"""The built-in synthetic catalog: drawn products with brand marks, patterns, merchant and
customer shots, template titles and EI-CLIP's confounders (brand names that are everyday words,
and other brands' products printed with those words' everyday sense)."""
from catalogclip.catalog.synth.generate import generate_catalog
from catalogclip.catalog.synth.render import RenderedView, render_product, render_view
from catalogclip.catalog.synth.spec import ProductSpec, sample_spec
from catalogclip.catalog.synth.world import BRANDS, CONFOUNDER_BRANDS, CONFOUNDER_WORDS, LEAVES

__all__ = [
    "BRANDS",
    "CONFOUNDER_BRANDS",
    "CONFOUNDER_WORDS",
    "LEAVES",
    "ProductSpec",
    "RenderedView",
    "generate_catalog",
    "render_product",
    "render_view",
    "sample_spec",
]
