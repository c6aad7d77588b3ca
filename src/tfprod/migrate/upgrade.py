"""TensorFlow's own ``tf_upgrade_v2`` (``tensorflow/tools/compatibility``), run on one source text.

tfprod does not reimplement its renames: this module calls ``ASTCodeUpgrader`` with the
``TFAPIChangeSpec`` that the ``tf_upgrade_v2`` command uses by default (symbol renames to
``tf.compat.v1.*`` where TF2 has no equivalent, argument reorders, keyword renames) and returns
the rewritten text with its log as data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import re
from typing import Any

INFO, WARNING, ERROR = "INFO", "WARNING", "ERROR"
_LOG = re.compile(r"(?:.*?:)?(\d+):(\d+): (INFO|WARNING|ERROR): (.*)", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class UpgradeLog:
    """One entry of ``tf_upgrade_v2``'s log: a rename (INFO) or a manual check it asks for."""

    severity: str
    line: int
    col: int
    message: str


@dataclasses.dataclass(frozen=True)
class Upgraded:
    """``tf_upgrade_v2``'s output for one file.

    Attributes:
        text: the rewritten source (the input itself when ``failure`` is set).
        log: its log, in source order.
        failure: why it could not process the file (its parser, pasta, does not read every
            Python 3 construct), else None.
    """

    text: str
    log: tuple[UpgradeLog, ...]
    failure: str | None = None


@functools.cache
def _upgrader() -> Any:
    from tensorflow.tools.compatibility import ast_edits, tf_upgrade_v2

    # The `tf_upgrade_v2` command's default mode.
    spec = tf_upgrade_v2.TFAPIChangeSpec(import_rename=False, upgrade_compat_v1_import=True)
    return ast_edits.ASTCodeUpgrader(spec)


def symbol_renames() -> dict[str, str]:
    """``tf_upgrade_v2``'s table of renamed symbols (``tf.Session`` -> ``tf.compat.v1.Session``)."""
    return _upgrader()._api_change_spec.symbol_renames


def _parse_log(entry: str) -> UpgradeLog | None:
    match = _LOG.match(entry)
    if match is None:
        return None
    line, col, severity, message = match.groups()
    return UpgradeLog(severity, int(line), int(col), " ".join(message.split()))


def upgrade_source(text: str, filename: str) -> Upgraded:
    """Runs ``tf_upgrade_v2`` on ``text`` (the source of ``filename``, for its messages)."""
    upgrader = _upgrader()
    try:
        # The upgrader prints every log line; the log is returned as data instead.
        with contextlib.redirect_stdout(io.StringIO()):
            processed, new_text, logs, errors = upgrader.update_string_pasta(text, filename)
    except Exception as e:  # pasta raises its own errors on syntax newer than it knows
        return Upgraded(text, (), f"{type(e).__name__}: {str(e).strip().splitlines()[0]}")
    if not processed:
        reason = next((line for line in reversed("".join(logs).splitlines()) if line.strip()),
                      "it could not parse the file")
        return Upgraded(text, (), reason.strip())
    entries = [e for e in (_parse_log(entry) for entry in logs) if e is not None]
    return Upgraded(new_text, tuple(sorted(entries, key=lambda e: (e.line, e.col))))
