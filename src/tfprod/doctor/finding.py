"""What the doctor found: one :class:`Finding` per problem, ranked in a :class:`DoctorReport`.

Ranking puts the most likely *cause* first. Each check is either a cause (bad data, a loss that
does not fit the output, frozen weights, a cut gradient, dead units, the learning rate) or a
symptom that a cause explains (gradients that vanish downstream of it, a batch that cannot be
overfit, a stagnating loss). Errors and warnings come before notes (``info``); among them causes
come before symptoms; then error before warning; then the order of :data:`CHECKS`, which lists
the causes that explain the most first (NaN in the data makes every other number meaningless).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

SEVERITIES = ("error", "warning", "info")

#: check name -> "cause" | "symptom", in ranking order within each kind.
CHECKS: dict[str, str] = {
    "data_values": "cause",
    "labels": "cause",
    "leakage": "cause",
    "input_scale": "cause",
    "trainable": "cause",
    "loss_pairing": "cause",
    "batch_order": "cause",
    "validation_overlap": "cause",
    "validation_shift": "cause",
    "gradient_cut": "cause",
    "recurrent_gradients": "cause",
    "batch_norm": "cause",
    "regularization": "cause",
    "dead_units": "cause",
    "init_loss": "cause",
    "label_signal": "cause",
    "learning_rate": "cause",
    "lr_schedule": "cause",
    "lr_range": "cause",
    "saturated_units": "cause",
    "class_balance": "cause",
    "features": "cause",
    "gradient_flow": "symptom",
    "overfit_batch": "symptom",
    "training_watch": "symptom",
}
_ORDER = {name: i for i, name in enumerate(CHECKS)}


@dataclasses.dataclass
class Finding:
    """One problem, the numbers behind it, and the fix.

    Attributes:
        check: the check that found it (a key of :data:`CHECKS`).
        severity: ``"error"`` (the model cannot learn, or learns the wrong thing), ``"warning"``
            (it learns badly) or ``"info"`` (worth knowing).
        title: names the cause, e.g. ``"learning rate too high"``.
        evidence: the measurements, in words and numbers.
        fix: what to change.
        values: the raw numbers, for JSON.
    """

    check: str
    severity: str
    title: str
    evidence: str
    fix: str
    values: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity={self.severity!r}; expected one of {SEVERITIES}")
        if self.check not in CHECKS:
            raise ValueError(f"check={self.check!r}; expected one of {list(CHECKS)}")

    @property
    def kind(self) -> str:
        """``"cause"`` or ``"symptom"``."""
        return CHECKS[self.check]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["kind"] = self.kind
        out["values"] = _jsonable(self.values)
        return out


def rank(findings: list[Finding]) -> list[Finding]:
    """Most likely cause first (see the module docstring); stable within ties."""
    return sorted(findings, key=lambda f: (f.severity == "info", f.kind != "cause",
                                           SEVERITIES.index(f.severity), _ORDER[f.check]))


@dataclasses.dataclass
class DoctorReport:
    """What :func:`tfprod.doctor.diagnose` found, most likely cause first.

    Attributes:
        model: the model's name.
        mode: ``"quick"`` or ``"full"``.
        num_examples: examples the checks looked at.
        findings: ranked findings.
        passed: checks that ran and found nothing (or only notes).
        skipped: checks that did not apply, and why.
        seconds: wall time per check group, and ``"total"``.
        artifacts: files written (the learning-rate curve).
        failed: checks that crashed on this model, and the error: the doctor's limit, not a
            verdict on the model; empty when every check that applied ran.
    """

    model: str
    mode: str
    num_examples: int
    findings: list[Finding]
    passed: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    artifacts: dict[str, str] = dataclasses.field(default_factory=dict)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "mode": self.mode, "num_examples": self.num_examples,
            "has_errors": self.has_errors,
            "findings": [f.to_json() for f in self.findings],
            "passed": list(self.passed), "skipped": dict(self.skipped),
            "failed": dict(self.failed),
            "seconds": dict(self.seconds),
            "artifacts": dict(self.artifacts),
        }

    def to_markdown(self) -> str:
        total = self.seconds.get("total")
        lines = [f"# tfprod doctor: {self.model}", "",
                 f"{self.mode} mode, {self.num_examples} examples"
                 + (f", {total:.1f} s" if total is not None else "") + ".", ""]
        if self.findings:
            lines += ["| # | severity | kind | finding | evidence | fix |",
                      "|---|---|---|---|---|---|"]
            for i, f in enumerate(self.findings, 1):
                cells = [str(i), f.severity, f.kind, f"**{f.title}** (`{f.check}`)", f.evidence,
                         f.fix]
                lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        else:
            lines.append("No findings.")
        if self.passed:
            lines += ["", "Passed: " + ", ".join(f"`{p}`" for p in self.passed) + "."]
        if self.skipped:
            lines += ["", "Skipped: " + "; ".join(f"`{k}` ({v})" for k, v in
                                                  self.skipped.items()) + "."]
        if self.failed:
            lines += ["", "**Could not run** (not a verdict on the model): " + "; ".join(
                f"`{k}` ({v})" for k, v in self.failed.items()) + "."]
        for name, path in self.artifacts.items():
            lines += ["", f"{name}: `{path}`"]
        return "\n".join(lines) + "\n"

    def dumps(self) -> str:
        """The report as a JSON string."""
        return json.dumps(self.to_json(), indent=2)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
