"""The catalog room: schema, readers, splits, entity vocabularies, synthetic generator."""
from catalogclip.catalog.problems import Problem, ProblemLog
from catalogclip.catalog.schema import Catalog, ImageRef, Product, RowError, read_jsonl, write_jsonl

__all__ = ["Catalog", "ImageRef", "Product", "Problem", "ProblemLog", "RowError", "read_jsonl", "write_jsonl"]
