"""``tfprod monitor``: drift, validation and model quality, from files or a server's request log.

Exit status: 0 no drift, 1 drift or validation errors found (for cron and CI), 2 bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tfprod.commands import group
from tfprod.console import console, err_console, table, tf, write_json, write_text


def _print(report: Any, title: str, html: Path | None, json_path: Path | None) -> None:
    from tfprod.monitor.html import render_html

    console.print(table(f"{title}: {len(report.drifted)} of {len(report.features)} features "
                        f"drifted (BH, FDR {report.fdr:g})", report.columns,
                        report.rows(limit=max(15, len(report.drifted) + 5))))
    if len(report.features) > max(15, len(report.drifted) + 5):
        console.print(f"[dim]... {len(report.features)} columns in all (--json / --html have "
                      "every one)[/]")
    if report.prediction_drift:
        console.print(table("predictions", ["output", "test", "score", "drift"], [
            [k, v["test"], f"{v['score']:.3f}", "DRIFT" if v["drift"] else "-"]
            for k, v in report.prediction_drift.items()]))
    if report.validation:
        issues = sorted(report.validation, key=lambda v: (v["severity"] != "error", -v["count"]))
        more = f", the first 10 of {len(issues)}" if len(issues) > 10 else ""
        console.print(table(f"validation{more}", ["feature", "check", "severity", "rows",
                                                  "examples"], [
            [v["feature"], v["check"], v["severity"], v["count"],
             ", ".join(map(str, v["examples"]))] for v in issues[:10]]))
    console.print(report.summary(), highlight=False, soft_wrap=True)
    write_text(html, render_html(report, title=title) if html else "")
    write_json(json_path, report.to_json())


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"7d"`` -> seconds."""
    from tfprod.errors import TfprodError

    unit = text[-1:].lower()
    try:
        value = float(text[:-1]) if unit in _UNITS else float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise TfprodError(f"--since {text!r}; expected a duration such as 90s, 30m, 1h or 7d")
    return value * _UNITS.get(unit, 1)


def register(app: typer.Typer) -> None:
    """Add ``tfprod monitor drift|profile|report`` to the root app."""
    monitor = group(app, "monitor", "Drift, validation and model quality (tfprod.monitor).")

    @monitor.command("drift")
    def drift(
        reference: Path = typer.Argument(..., help="CSV, Parquet, .npy/.npz, TFRecord folder, "
                                         "exported version folder or .profile.npz."),
        current: Path = typer.Argument(..., help="The data to compare, same formats."),
        label: str | None = typer.Option(None, help="A column holding labels (not tested)."),
        fdr: float = typer.Option(0.05, help="False-discovery rate (Benjamini-Hochberg)."),
        multivariate: str = typer.Option("auto", help="auto|domain_classifier|mmd|none."),
        numeric_test: str = typer.Option("auto", help="auto|ks|wasserstein|psi."),
        categorical_test: str = typer.Option("auto", help="auto|chi2|jensen_shannon."),
        html: Path | None = typer.Option(None, help="Write the HTML report here."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the JSON here."),
    ) -> None:
        """Drift of CURRENT from REFERENCE: features, joint distribution, predictions, schema.

        Per-feature tests with Benjamini-Hochberg, a domain classifier (or MMD on the model's
        embeddings), and the model's predictions when REFERENCE is an exported version.

        Example: [bold]tfprod monitor drift models/digits/1 shifted.npz --html drift.html[/]
        """
        from tfprod.monitor import detect_drift, load_dataset
        from tfprod.monitor.model import version_folder

        ref = load_dataset(reference, label=label)
        cur = load_dataset(current, label=label)
        version = version_folder(reference)
        if version is not None:
            tf()
            from tfprod.monitor.model import ExportedModel, with_model_outputs

            with_model_outputs(ExportedModel(version), ref, cur)
        report = detect_drift(ref, cur, fdr=fdr, multivariate=multivariate,
                              numeric_test=numeric_test, categorical_test=categorical_test)
        _print(report, f"{current} vs {reference}", html, json_path)
        raise typer.Exit(report.exit_status)

    @monitor.command("report")
    def report(
        model_base_path: Path = typer.Option(..., "--model_base_path",
                                             help="The model's folder of versions."),
        log: str = typer.Option(..., help="The request log: SQLite path or postgresql:// URL."),
        model_name: str | None = typer.Option(None, "--model_name",
                                              help="Default: the base path's folder name."),
        since: str = typer.Option("1h", help="The window: requests newer than this (90s, "
                                  "30m, 1h, 7d)."),
        fdr: float = typer.Option(0.05, help="False-discovery rate (Benjamini-Hochberg)."),
        html: Path | None = typer.Option(None, help="Write the HTML report here."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the JSON here."),
    ) -> None:
        """Drift, validation and accuracy of a window of the request log.

        Compared with the reference sample of the model's newest version; accuracy from the
        labels sent to :feedback where they arrived, estimated from confidence where not.

        Example: [bold]tfprod monitor report --model_base_path models/digits --log
        requests.db --since 1h --html report.html[/]
        """
        import time

        from tfprod.errors import TfprodError
        from tfprod.monitor import detect_drift, load_dataset
        from tfprod.monitor.model import version_folder
        from tfprod.monitor.store import open_store, records_to_dataset, redact

        name = model_name or model_base_path.resolve().name
        window = parse_since(since)
        store = open_store(log, create=False)
        try:
            records = store.read(name, since=time.time() - window)
        finally:
            store.close()
        if not records:
            raise TfprodError(f"{redact(log)}: no logged requests of model {name!r} in the last "
                              f"{since}; widen --since or check --log and --model_name")
        version = version_folder(model_base_path)
        if version is None:
            raise TfprodError(f"{model_base_path}: no exported version there; give the folder "
                              "of numbered versions the server serves")
        ref = load_dataset(version)
        cur = records_to_dataset(records)
        cur.source = f"{redact(log)} ({len(records)} requests, last {since})"
        tf()
        from tfprod.monitor.model import ExportedModel

        exported = ExportedModel(version)
        if exported.has_embedding:
            ref.embeddings = exported.embeddings(ref.features)
            cur.embeddings = exported.embeddings(cur.features)
        result = detect_drift(ref, cur, fdr=fdr)
        _print(result, f"model {name}, last {since} ({cur.rows} rows) vs version "
               f"{Path(version).name}", html, json_path)
        raise typer.Exit(result.exit_status)

    @monitor.command("profile")
    def profile(
        data: Path = typer.Argument(..., help="CSV, Parquet, .npy/.npz or TFRecord folder."),
        out: Path = typer.Option(..., help="The .profile.npz to write."),
        merge: list[Path] = typer.Option([], help="Profiles to merge into it (repeatable)."),
        capacity: int = typer.Option(10_000, help="Rows kept in the sample."),
    ) -> None:
        """Profile DATA: exact mergeable summaries and a bounded row sample.

        Example: [bold]tfprod monitor profile shard0.csv --out all.profile.npz --merge
        shard1.profile.npz[/]
        """
        from tfprod.monitor import Profile, load_dataset

        d = load_dataset(data)
        result = Profile.of(d.features, capacity=capacity)
        for other in merge:
            result = result.merge(Profile.load(other))
        result.save(str(out).removesuffix(".profile.npz") + ".profile.npz")
        console.print(table(f"profile of {result.rows:,} rows ({len(result.keys):,} sampled)",
                            ["feature", "dtype", "count", "missing", "mean", "std", "min", "max"],
                            [[k, s.dtype, s.count, s.missing, f"{s.mean:.4g}", f"{s.std:.4g}",
                              s.minimum, s.maximum] for k, s in result.summaries.items()]))
        err_console.print(f"[dim]wrote {out}[/]")
