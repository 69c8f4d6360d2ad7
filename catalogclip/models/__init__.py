"""Models: backbones, entity modules, instance decoder, category tower, methods registry."""
