"""Bad input is reported, skipped and counted, never a bare traceback."""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO


KEPT_KINDS = ("undecodable bytes",)
"""Problem kinds whose row is kept (decoded with replacement), not skipped."""


@dataclass(frozen=True)
class Problem:
    kind: str  # "malformed row", "duplicate id", "missing image", "broken image", "empty title", ...
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.kind}: {self.message}"


@dataclass
class ProblemLog:
    """Collects problems met while reading input; `loaded` counts what was usable.

    Every problem is kept (for `--problems FILE`); `report` prints the first few of each kind
    and a count, so 30k missing images do not flood a terminal. `notes` say what was changed on
    the way in (attributes normalised, images downloaded), printed before the summary.
    """

    problems: list[Problem] = field(default_factory=list)
    loaded: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, file: str | Path, line: int | None, message: str) -> None:
        self.problems.append(Problem(kind, str(file), line, message))

    def counts(self) -> Counter:
        return Counter(p.kind for p in self.problems)

    def __len__(self) -> int:
        return len(self.problems)

    def summary(self) -> str:
        counts = self.counts()
        kept = {kind: counts.pop(kind) for kind in KEPT_KINDS if kind in counts}
        skipped = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "nothing"
        decoded = "".join(f"; {n} lines with {kind} kept, bad bytes replaced by U+FFFD" for kind, n in kept.items())
        return f"{self.loaded} usable, skipped: {skipped}{decoded}"

    def report(self, out: TextIO = sys.stderr, per_kind: int = 5) -> None:
        shown: Counter = Counter()
        for problem in self.problems:
            if shown[problem.kind] < per_kind:
                print(problem, file=out)
            shown[problem.kind] += 1
        for kind, n in sorted(shown.items()):
            if n > per_kind:
                print(f"... and {n - per_kind} more '{kind}'", file=out)
        for note in self.notes:
            print(note, file=out)
        print(self.summary(), file=out)

    def write(self, path: str | Path) -> None:
        Path(path).write_text("".join(f"{p}\n" for p in self.problems), encoding="utf-8")
