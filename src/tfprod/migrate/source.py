"""``Source``: a module's text with its AST, and ``Edit``s applied by character offset."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class Edit:
    """Replace ``text[start:end]`` with ``new``."""

    start: int
    end: int
    new: str


class Source:
    """A parsed module: positions of nodes as character offsets, source segments, edits."""

    def __init__(self, text: str, filename: str = "<source>"):
        self.text = text
        self.tree = ast.parse(text, filename)
        self.lines = text.splitlines(keepends=True)
        self._starts = [0]
        for line in self.lines:
            self._starts.append(self._starts[-1] + len(line))

    def offset(self, lineno: int, col: int) -> int:
        """Character offset of AST position (1-based line, UTF-8 byte column)."""
        line = self.lines[lineno - 1] if lineno - 1 < len(self.lines) else ""
        return self._starts[lineno - 1] + len(line.encode("utf-8")[:col].decode("utf-8",
                                                                                 "replace"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset),
                self.offset(node.end_lineno, node.end_col_offset))

    def segment(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.text[start:end]

    def replace(self, node: ast.AST, new: str) -> Edit:
        start, end = self.span(node)
        return Edit(start, end, new)


def apply_edits(text: str, edits: Iterable[Edit]) -> tuple[str, list[Edit]]:
    """Applies the edits that contain no other edit; returns the new text and the edits left
    (those that enclose an applied one: recompute them on the new text)."""
    edits = sorted(set(edits), key=lambda e: (e.start, -e.end))
    inner = [e for e in edits
             if not any(o is not e and e.start <= o.start and o.end <= e.end and o != e
                        for o in edits)]
    left = [e for e in edits if e not in inner]
    chosen: list[Edit] = []
    for e in sorted(inner, key=lambda e: e.start):
        if not chosen or e.start >= chosen[-1].end:
            chosen.append(e)
    out = text
    for e in reversed(chosen):
        out = out[:e.start] + e.new + out[e.end:]
    return out, left
