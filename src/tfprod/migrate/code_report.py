"""``CodeReport``: what ``tfprod migrate code`` did to each file, as a table, Markdown or JSON."""

from __future__ import annotations

import dataclasses
from typing import Any

from tfprod.migrate.finding import ACTIONS, ADVICE, AUTO, MANUAL, Finding
from tfprod.migrate.rules import KERAS, KERAS_WHY, RULES, TF_UPGRADE_V2
from tfprod.migrate.upgrade import UpgradeLog

#: Rule id -> what it covers, for the legend of reports.
RULE_TITLES = {**{r.id: r.title for r in RULES.values()},
               KERAS: "tf.compat.v1.keras / Keras 2 names and arguments",
               TF_UPGRADE_V2: "a manual check tf_upgrade_v2 itself asks for"}


#: Rule id -> what happens on TF 2.21 and why, in one line.
RULE_LEGEND = {
    **{r.id: f"{r.what.format(symbol=r.title)}; {r.why}" for r in RULES.values()},
    KERAS: f"a name or argument Keras 3 does not have, or tf.compat.v1.keras: {KERAS_WHY}",
    TF_UPGRADE_V2: "a manual check that tf_upgrade_v2 itself asks for (its message is shown)",
}


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


@dataclasses.dataclass
class FileReport:
    """One Python file.

    Attributes:
        path: relative to SRC.
        code_lines: non-blank lines that are not only a comment.
        unchanged: code lines left as they were, with no finding that needs work.
        rewritten: code lines changed by tf_upgrade_v2 or tfprod's safe rewrites (and not
            needing work).
        need_work: code lines with a ``manual`` finding.
        findings: tfprod's findings and tf_upgrade_v2's own warnings, by line.
        upgrade_log: tf_upgrade_v2's full log (renames included).
        upgrade_failure: why tf_upgrade_v2 could not process the file, if it could not.
    """

    path: str
    code_lines: int
    unchanged: int
    rewritten: int
    need_work: int
    findings: list[Finding]
    upgrade_log: list[UpgradeLog]
    upgrade_failure: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "code_lines": self.code_lines, "unchanged": self.unchanged,
                "rewritten": self.rewritten, "need_work": self.need_work,
                "upgrade_failure": self.upgrade_failure,
                "tf_upgrade_v2_log": [dataclasses.asdict(e) for e in self.upgrade_log]}


@dataclasses.dataclass
class CodeReport:
    """The result of :func:`tfprod.migrate.migrate_code`."""

    src: str
    dst: str
    files: list[FileReport]
    copied: int
    seconds: float

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.files for f in r.findings]

    def count(self, action: str) -> int:
        return sum(f.action == action for f in self.findings)

    def totals(self) -> dict[str, int]:
        return {k: sum(getattr(r, k) for r in self.files)
                for k in ("code_lines", "unchanged", "rewritten", "need_work")}

    @property
    def summary(self) -> str:
        t = self.totals()
        counts = ", ".join(f"{self.count(a)} {a}" for a in ACTIONS)
        return (f"{len(self.files)} Python file{'s' * (len(self.files) != 1)}, "
                f"{t['code_lines']} code lines: {t['unchanged']} run unchanged, "
                f"{t['rewritten']} rewritten, {t['need_work']} need work "
                f"({len(self.findings)} findings: {counts})")

    def rows(self) -> list[list[str]]:
        """Table rows: where, rule, how, the API, TF2 replacement (what happens and why: see
        :meth:`legend`, one line per rule, and the Markdown/JSON reports)."""
        return [[f.where, f.rule, f.action, f.symbol or _clip(f.what), f.replacement]
                for f in self.findings]

    COLUMNS = ["where", "rule", "how", "API", "TF2 replacement"]

    def legend(self) -> list[str]:
        """What happens on TF 2.21, and why, for each rule with findings."""
        return [f"{rule}: {RULE_LEGEND[rule]}" for rule in sorted({f.rule for f in self.findings})
                if rule in RULE_LEGEND]

    def to_json(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "summary": self.summary,
                "totals": {**self.totals(), "files": len(self.files),
                           "copied_files": self.copied,
                           **{a: self.count(a) for a in ACTIONS}},
                "seconds": round(self.seconds, 3),
                "rules": RULE_TITLES,
                "findings": [f.to_json() for f in self.findings],
                "files": [r.to_json() for r in self.files]}

    def to_markdown(self) -> str:
        def cell(text: str) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        out = [f"# tfprod migrate code: `{self.src}` -> `{self.dst}`", "", self.summary, "",
               f"`{AUTO}`: rewritten in the output; `{MANUAL}`: needs a person; `{ADVICE}`: "
               "runs unchanged, a simpler TF2 form exists.", ""]
        if self.findings:
            out += ["| where | rule | how | what happens on TF 2.21 | why | TF2 replacement |",
                    "|---|---|---|---|---|---|"]
            out += [f"| {cell(f.where)} | {f.rule} | {f.action} | {cell(f.what)} | "
                    f"{cell(f.why)} | {cell(f.replacement)} |" for f in self.findings]
            out.append("")
        failed = [r for r in self.files if r.upgrade_failure]
        if failed:
            out += ["tf_upgrade_v2 could not process (tfprod's rules still ran):", ""]
            out += [f"- `{r.path}`: {cell(r.upgrade_failure or '')}" for r in failed]
            out.append("")
        out += ["| file | code lines | unchanged | rewritten | need work |",
                "|---|---|---|---|---|"]
        out += [f"| {cell(r.path)} | {r.code_lines} | {r.unchanged} | {r.rewritten} | "
                f"{r.need_work} |" for r in self.files]
        used = sorted({f.rule for f in self.findings})
        if used:
            out += ["", "Rules:", ""] + [f"- `{k}`: {RULE_TITLES.get(k, k)}" for k in used]
        return "\n".join(out) + "\n"
