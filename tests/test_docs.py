"""The README's command reference stays true to what is registered."""
import re
from pathlib import Path

from catalogclip.catalog.readers import READERS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_import_line_names_every_registered_reader():
    line = re.search(r"catalogclip catalog import --format (\S+) SRC OUT\.jsonl", README.read_text())
    assert line, "README has no `catalogclip catalog import --format ...` line"
    assert set(line.group(1).split("|")) == set(READERS.names())
