"""``Finding``: one line of TF1 code that TF 2.21 / Keras 3 runs differently, and what to do."""

from __future__ import annotations

import dataclasses
from typing import Any

#: How a finding is handled: rewritten in DST, left for a person, or a suggestion only.
AUTO, MANUAL, ADVICE = "auto", "manual", "advice"
ACTIONS = (AUTO, MANUAL, ADVICE)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One use of an API that breaks (or can be simpler) on TF 2.21 with Keras 3.

    Attributes:
        file: the source file, relative to SRC.
        line: 1-based line in the SRC file (not in the rewritten one).
        rule: the rule id (see :data:`tfprod.migrate.rules.RULES`), or ``"tf_upgrade_v2"`` for
            a warning of TensorFlow's own upgrader.
        symbol: the API as written after ``tf_upgrade_v2``, e.g. ``tf.compat.v1.layers.dense``.
        what: what happens on TF 2.21, in one sentence.
        why: why it happens.
        replacement: the TF2 code to use instead (what was written, for ``auto``).
        action: ``auto`` (rewritten in DST), ``manual`` (needs a person) or ``advice`` (runs
            unchanged; a simpler TF2 form exists).
        col: 0-based column, for editors.
    """

    file: str
    line: int
    rule: str
    symbol: str
    what: str
    why: str
    replacement: str
    action: str
    col: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"
