"""Counts of records read and skipped while loading, with the first few reasons.

Each of the first ``report`` skipped records prints one warning line (where + why); ``summary()``
is the closing line.
"""

from __future__ import annotations

import collections
import dataclasses
import sys


@dataclasses.dataclass
class DataStats:
    records_read: int = 0
    examples: int = 0
    skipped: int = 0
    first_skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    report: int = 5
    stream: object = None

    def kept(self) -> None:
        self.records_read += 1
        self.examples += 1

    def skip(self, where: str, reason: str) -> None:
        self.records_read += 1
        self.skipped += 1
        self.reasons[reason.split(" (")[0]] += 1
        if len(self.first_skipped) < self.report:
            self.first_skipped.append((where, reason))
            print(f"hierarchos: warning: skipped record {where}: {reason}", file=self.stream or sys.stderr)

    def summary(self) -> str:
        line = f"data: {self.records_read} records read, {self.examples} examples"
        if self.skipped:
            top = ", ".join(f"{n} {r}" for r, n in self.reasons.most_common(3))
            line += f", {self.skipped} skipped ({top})"
        return line

    def as_dict(self) -> dict:
        return {"records_read": self.records_read, "examples": self.examples, "skipped": self.skipped,
                "first_skipped": [list(x) for x in self.first_skipped], "reasons": dict(self.reasons)}
