"""``migrate_code``: TF1 source -> TF 2.21 / Keras 3 source, with a report of every finding.

Each Python file goes through TensorFlow's own ``tf_upgrade_v2`` first, then through tfprod's
rules (:mod:`tfprod.migrate.rules`) for what it leaves broken under Keras 3; the safe rewrites
(:mod:`tfprod.migrate.rewrites`) are applied, the rest is reported with its SRC line.

SRC is only read. Every file is read and parsed before anything is written; the output is built
in a hidden folder (or file) beside DST and renamed into place, so a failure leaves no partial
DST.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import io
import os
import secrets
import shutil
import time
import tokenize
from collections.abc import Callable
from pathlib import Path

from tfprod.errors import TfprodError
from tfprod.migrate.code_report import CodeReport, FileReport
from tfprod.migrate.finding import AUTO, MANUAL, Finding
from tfprod.migrate.rules import TF_UPGRADE_V2
from tfprod.migrate.scan import scan
from tfprod.migrate.source import Source, apply_edits
from tfprod.migrate.upgrade import ERROR, WARNING, symbol_renames, upgrade_source

#: Folders never copied from a source tree.
SKIPPED_DIRS = {".git", "__pycache__", ".hg", ".svn"}
_MAX_PASSES = 5


def _read_python(path: Path, shown: str) -> tuple[str, str]:
    """(text, encoding) of a Python file; TfprodError if it is not Python 3 source."""
    data = path.read_bytes()
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        text = data.decode(encoding)
    except (SyntaxError, UnicodeDecodeError, LookupError) as e:
        raise TfprodError(f"{shown} is not Python source text ({e}); migrate code reads "
                          "Python 3 files: remove it from SRC or pass a folder without it"
                          ) from None
    if "\x00" in text:
        raise TfprodError(f"{shown} is not Python source text (it holds NUL bytes); remove it "
                          "from SRC or pass a folder without it")
    try:
        ast.parse(text, shown)
    except SyntaxError as e:
        raise TfprodError(f"{shown}:{e.lineno}:{e.offset or 0}: does not parse as Python 3 "
                          f"({e.msg}); tf_upgrade_v2 and tfprod read Python 3 only: fix the "
                          "line (a Python 2 file needs 2to3 first)") from None
    return text, encoding


def _code_lines(text: str) -> set[int]:
    return {i for i, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")}


def _line_map(old: list[str], new: list[str]) -> Callable[[int], int]:
    """1-based line of ``new`` -> the line of ``old`` it came from."""
    table: dict[int, int] = {}
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new,
                                                       autojunk=False).get_opcodes():
        for j in range(j1, j2):
            if tag == "equal":
                table[j + 1] = i1 + (j - j1) + 1
            elif tag == "replace":
                table[j + 1] = i1 + min(j - j1, i2 - i1 - 1) + 1
            else:  # inserted lines belong to the line before them
                table[j + 1] = max(i1, 1)
    return lambda line: table.get(line, line)


def _changed_lines(old: list[str], new: list[str]) -> set[int]:
    changed: set[int] = set()
    for tag, i1, i2, _, _ in difflib.SequenceMatcher(None, old, new,
                                                     autojunk=False).get_opcodes():
        if tag in ("replace", "delete"):
            changed.update(range(i1 + 1, i2 + 1))
    return changed


def _rewrite(text: str, first_edits: list, canonical: Callable[[str], str]) -> str:
    """Applies the safe edits; edits enclosing others are recomputed on the new text."""
    edits = first_edits
    for _ in range(_MAX_PASSES):
        if not edits:
            break
        text, left = apply_edits(text, edits)
        edits = scan(Source(text), canonical).edits if left else []
    return text


def migrate_file_text(text: str, path: str) -> tuple[str, FileReport]:
    """Migrates one module's source. Returns the new text and the file's report.

    ``path`` is the file's name in reports (relative to SRC).
    """
    upgraded = upgrade_source(text, path)
    renames = symbol_renames()
    canonical = ((lambda n: renames.get(n, n)) if upgraded.failure else (lambda n: n))
    try:
        src = Source(upgraded.text, path)
    except SyntaxError:  # tf_upgrade_v2 wrote something that does not parse: keep SRC's text
        upgraded = dataclasses.replace(upgraded, text=text, log=(),
                                       failure="its output did not parse")
        canonical = lambda n: renames.get(n, n)  # noqa: E731
        src = Source(text, path)
    result = scan(src, canonical)
    final = _rewrite(upgraded.text, result.edits, canonical)
    raw = result.findings
    try:
        ast.parse(final)
    except SyntaxError:  # never expected: report the rewrites as manual instead of writing them
        final = upgraded.text
        raw = [dataclasses.replace(f, action=MANUAL) if f.action == AUTO else f for f in raw]
    old_lines = text.splitlines()
    to_src = _line_map(old_lines, upgraded.text.splitlines())
    findings = [Finding(path, to_src(f.line), f.rule, f.symbol, f.what, f.why, f.replacement,
                        f.action, f.col) for f in raw]
    covered = {f.line for f in findings if f.action == MANUAL}
    for e in upgraded.log:
        if e.severity in (WARNING, ERROR) and e.line not in covered:
            findings.append(Finding(path, e.line, TF_UPGRADE_V2, "", e.message,
                                    "reported by TensorFlow's tf_upgrade_v2",
                                    "see tf_upgrade_v2's message", MANUAL, e.col))
    if upgraded.failure:
        findings.append(Finding(path, 1, TF_UPGRADE_V2, "", "tf_upgrade_v2 could not process "
                                f"this file ({upgraded.failure}); its renames are not applied",
                                "tf_upgrade_v2 parses with pasta, which does not read every "
                                "Python 3 construct (walrus, match, f-string `=`)",
                                "rename the TF1 symbols by hand (tfprod's rules ran on the "
                                "original names)", MANUAL))
    findings.sort(key=lambda f: (f.line, f.col, f.rule))
    code = _code_lines(text)
    need = {f.line for f in findings if f.action == MANUAL} & code
    changed = _changed_lines(old_lines, final.splitlines()) & code
    report = FileReport(path=path, code_lines=len(code), unchanged=len(code - changed - need),
                        rewritten=len(changed - need), need_work=len(need), findings=findings,
                        upgrade_log=list(upgraded.log), upgrade_failure=upgraded.failure)
    return final, report


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_paths(src: Path, dst: Path, *, report: Path | None = None,
                overwrite: bool = False) -> None:
    """The bad-input checks on SRC, DST and the report path (nothing is read or written)."""
    if not src.exists():
        raise TfprodError(f"SRC {src} does not exist; pass a Python file or a folder of them")
    if src.is_file() and src.suffix != ".py":
        raise TfprodError(f"SRC {src} is not a Python file (expected a .py file or a folder); "
                          "notebooks and other files are copied when SRC is a folder")
    s, d = src.resolve(), dst.resolve()
    if _inside(d, s):
        raise TfprodError(f"DST {dst} is inside SRC {src}; SRC is never modified: choose a DST "
                          "outside it")
    if _inside(s, d):
        raise TfprodError(f"DST {dst} contains SRC {src}; choose a DST outside it")
    if report is not None and src.is_dir() and _inside(report.resolve(), s):
        raise TfprodError(f"--report {report} is inside SRC {src}; SRC is never modified: "
                          "write the report elsewhere")
    if report is not None and report.suffix not in (".md", ".json"):
        raise TfprodError(f"--report {report}: expected a .md (Markdown) or .json file")
    if dst.exists():
        if not overwrite:
            raise TfprodError(f"DST {dst} exists; pass --overwrite to replace it, or choose a "
                              "new path")
        if dst.is_dir() != src.is_dir():
            kind = "folder" if dst.is_dir() else "file"
            raise TfprodError(f"DST {dst} is a {kind} and SRC {src} is not; choose another "
                              "DST")


def _sources(src: Path) -> tuple[list[Path], list[Path]]:
    """(Python files, other files) under ``src``, relative, sorted."""
    if src.is_file():
        return [Path(src.name)], []
    python, other = [], []
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            rel = Path(folder, name).relative_to(src)
            (python if name.endswith(".py") else other).append(rel)
    return python, other


def read_sources(src: Path) -> tuple[dict[Path, tuple[str, str]], list[Path]]:
    """Every Python file under ``src`` read and parsed ({relative path: (text, encoding)}),
    and the other files; raises TfprodError on the first file that is not Python 3."""
    python, other = _sources(src)
    if not python:
        raise TfprodError(f"SRC {src} holds no Python (.py) files; nothing to migrate")
    base = src if src.is_dir() else src.parent
    return {rel: _read_python(base / rel, str(base / rel)) for rel in python}, other


def _publish(staging: Path, dst: Path) -> None:
    """Renames ``staging`` to ``dst``; an existing ``dst`` is moved aside first and removed."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{secrets.token_hex(4)}")
        os.rename(dst, old)
    try:
        os.rename(staging, dst)
    except OSError:
        if old is not None:
            os.rename(old, dst)
        raise
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def migrate_code(src: str | os.PathLike, dst: str | os.PathLike, *,
                 overwrite: bool = False, report_path: str | os.PathLike | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> CodeReport:
    """Migrates a Python file or a folder of them from TF1 to TF 2.21 / Keras 3.

    Args:
        src: a ``.py`` file or a folder (read only; other files in it are copied as they are).
        dst: the output file or folder; must not exist (unless ``overwrite``) and must not be
            inside SRC.
        overwrite: replace an existing DST (the new one is complete before the old one goes).
        report_path: only checked here (not inside SRC; ``.md`` or ``.json``); the caller
            writes the report.
        progress: called with (file, index, total) before each file.

    Returns:
        A :class:`CodeReport`.

    Raises:
        TfprodError: a missing SRC, a SRC file that is not Python, a file that does not parse
            (named with its line), DST inside SRC, an existing DST without ``overwrite``.

    Example:

    >>> report = migrate_code("legacy/", "migrated/")
    >>> print(report.summary)
    """
    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    check_paths(src, dst, report=Path(report_path) if report_path else None,
                overwrite=overwrite)
    texts, other = read_sources(src)
    python = list(texts)
    outputs: dict[Path, tuple[str, str]] = {}
    reports = []
    for i, rel in enumerate(python):
        if progress:
            progress(str(rel), i, len(python))
        text, encoding = texts[rel]
        final, file_report = migrate_file_text(text, rel.as_posix())
        outputs[rel] = (final, encoding)
        reports.append(file_report)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = dst.with_name(f".{dst.name}.tfprod-{secrets.token_hex(4)}")
    try:
        if src.is_file():
            final, encoding = outputs[python[0]]
            with open(staging, "w", encoding=encoding, newline="") as f:
                f.write(final)
            shutil.copymode(src, staging)
        else:
            staging.mkdir()
            for rel in other:
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, staging / rel)
            for rel, (final, encoding) in outputs.items():
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                with open(staging / rel, "w", encoding=encoding, newline="") as f:
                    f.write(final)
                shutil.copymode(src / rel, staging / rel)
        _publish(staging, dst)
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        elif staging.exists():
            staging.unlink()
    return CodeReport(str(src), str(dst), reports, len(other), time.perf_counter() - start)
