"""``tfprod migrate code|model|check`` and ``tfprod bench graph``: TF1 -> TF 2.21 / Keras 3."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from tfprod.commands import group
from tfprod.console import console, progress, table, tf, write_json, write_text
from tfprod.errors import TfprodError

#: ``tfprod bench graph`` modes (checked before TensorFlow loads; see graph_bench.MODES).
_MODES = ("session", "session_nofeed", "eager", "function", "xla")


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def code(
    src: Path = typer.Argument(..., help="A TF1 Python file or a folder of them (read only)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where the migrated file or folder goes "
                                                       "(not inside SRC)."),
    report: Path | None = typer.Option(None, "--report",
                                       help="Also write the report: a .md or .json file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Migrate TF1 source: tf_upgrade_v2, then tfprod's Keras 3 rules; a finding per line.

    Every finding says what breaks on TF 2.21 and why, the TF2 replacement, and whether it was
    rewritten (auto), needs a person (manual) or is a suggestion (advice).

    Example: [bold]tfprod migrate code legacy/ --out migrated/ --report migration.md[/]
    """
    from tfprod.migrate.code import check_paths, read_sources

    check_paths(src, out, report=report, overwrite=overwrite)  # bad input before TF loads
    read_sources(src)
    tf()
    from tfprod.migrate.code import migrate_code

    with progress() as p:
        task = p.add_task("tf_upgrade_v2 + Keras 3 rules", total=None)
        result = migrate_code(src, out, overwrite=overwrite, report_path=report,
                              progress=lambda f, i, n: p.update(task, description=f,
                                                                completed=i, total=n))
    if result.findings:
        console.print(table(f"tfprod migrate code: {src} -> {out}", result.COLUMNS,
                            result.rows()))
        for line in result.legend():
            console.print(f"[dim]{escape(line)}[/]", highlight=False)
    console.print(result.summary, highlight=False)
    if report is not None:
        if report.suffix == ".json":
            write_json(report, result.to_json())
        else:
            write_text(report, result.to_markdown())


def model(
    tf1_model: Path = typer.Argument(..., help="A TF1 SavedModel folder, a frozen GraphDef "
                                               "(.pb/.pbtxt) or a checkpoint (prefix or folder)."),
    base: Path = typer.Argument(..., help="Base path of versions (BASE/<version>/)."),
    graph: str | None = typer.Option(None, help="For a checkpoint: module:function or "
                                                "file.py:function that builds its graph "
                                                "(default: its .meta file)."),
    inputs: str | None = typer.Option(None, help="Input tensor names, comma-separated "
                                                 "(frozen graph / checkpoint)."),
    outputs: str | None = typer.Option(None, help="Output tensor names, comma-separated "
                                                  "(frozen graph / checkpoint)."),
    tags: str = typer.Option("serve", help="MetaGraph tags of a TF1 SavedModel."),
    signature: str | None = typer.Option(None, help="TF1 signature to serve by default when "
                                                    "there is no serving_default."),
    version: int | None = typer.Option(None, help="Version number (default: next free)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing version."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the result as JSON."),
) -> None:
    """Migrate a TF1 model to a TF2 SavedModel that tfprod serve and TF Serving load.

    Example: [bold]tfprod migrate model legacy/frozen.pb models/legacy --outputs probs[/]
    """
    tf()
    from tfprod.migrate.model import migrate_model

    with progress() as p:
        task = p.add_task("migrating", total=None)
        result = migrate_model(tf1_model, base, graph=graph, inputs=_names(inputs),
                               outputs=_names(outputs), tags=_names(tags) or ["serve"],
                               signature=signature, version=version, overwrite=overwrite,
                               progress=lambda s: p.update(task, description=s))
    rows = []
    for key, sig in result.signatures.items():
        for direction in ("inputs", "outputs"):
            for name, spec in sig[direction].items():
                shape = "unknown" if spec["shape"] is None else "(" + ", ".join(
                    "None" if d is None else str(d) for d in spec["shape"]) + ")"
                rows.append([key, direction[:-1], name, spec["tensor"], spec["dtype"], shape])
    console.print(table(f"tfprod migrate model: {tf1_model} -> {result.path}",
                        ["signature", "", "key", "TF1 tensor", "dtype", "shape"], rows))
    kept = (f"{result.variables} variables kept as variables" if result.variables
            else "no variables (constants in the graph)")
    console.print(f"published version {result.version} in {escape(str(base))} ({kept}, "
                  f"{result.seconds:.1f} s)", highlight=False)
    console.print(f"[dim]serve: tfprod serve --model_name={escape(Path(base).name)} "
                  f"--model_base_path={escape(str(base))}\ncheck: tfprod migrate check "
                  f"{escape(str(base))}[/]", highlight=False)
    write_json(json_path, result.to_json())


def check(
    migrated: Path = typer.Argument(..., help="The migrated version folder, or its base path "
                                              "(newest version)."),
    tf1_model: Path | None = typer.Argument(None, help="The TF1 model (default: the one the "
                                                       "migration record names)."),
    graph: str | None = typer.Option(None, help="For a checkpoint: the function that builds "
                                                "its graph (default: the recorded one)."),
    inputs: Path | None = typer.Option(None, help=".npz with one array per signature input "
                                                  "(default: generated)."),
    batch: int = typer.Option(8, help="Examples to generate."),
    atol: float = typer.Option(1e-5, help="Absolute tolerance."),
    rtol: float = typer.Option(0.0, help="Relative tolerance."),
    signature: str = typer.Option("serving_default", help="Signature to check."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Run the TF1 graph (Session, child process) and the migrated model on the same inputs.

    Exits 1 when an output differs by more than atol + rtol * |TF1 output|.

    Example: [bold]tfprod migrate check models/legacy legacy/frozen.pb --atol 1e-5[/]
    """
    tf()
    from tfprod.migrate.check import check_migration

    with progress() as p:
        p.add_task("running both models", total=None)
        report = check_migration(migrated, tf1_model, graph=graph, inputs=inputs, batch=batch,
                                 atol=atol, rtol=rtol, signature=signature)
    console.print(table(f"tfprod migrate check: {report.source} vs {report.migrated}",
                        report.COLUMNS, report.rows()))
    style = "green" if report.passed else "red"
    console.print(f"[{style}]{escape(report.summary)}[/]", highlight=False)
    write_json(json_path, report.to_json())
    if not report.passed:
        raise typer.Exit(1)


def bench_graph(
    workload: str = typer.Option("mlp", help="mlp (a training step) or rnn (a tanh recurrence, "
                                             "tf.while_loop vs a Python loop)."),
    batch: int = typer.Option(32, help="Batch size (random data)."),
    hidden: int = typer.Option(64, help="Hidden units."),
    time_steps: int = typer.Option(20, "--time", help="Steps of the rnn workload."),
    steps: int = typer.Option(200, help="Timed steps per run."),
    repeats: int = typer.Option(3, help="Runs per mode; the median is reported."),
    modes: str = typer.Option("session,session_nofeed,eager,function,xla",
                              help="Comma-separated subset to run."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Static vs dynamic graphs: TF1 Session vs eager vs tf.function vs XLA, steps/s.

    Example: [bold]tfprod bench graph --workload mlp --batch 32 --hidden 64 --repeats 3[/]
    """
    chosen = _names(modes) or []
    if any(m not in _MODES for m in chosen) or not chosen:
        raise TfprodError(f"--modes {modes!r}; expected a comma-separated subset of "
                          f"{','.join(_MODES)}")
    tf()
    from tfprod.migrate.graph_bench import MODES, bench_graph, make_problem

    problem = make_problem(workload, batch=batch, hidden=hidden, time_steps=time_steps)
    with progress() as p:
        task = p.add_task("building graphs, tracing, compiling", total=None)
        report = bench_graph(problem, steps=steps, repeats=repeats, modes=chosen,
                             progress=lambda m, i, n: p.update(task, description=m,
                                                               completed=i, total=n))
    console.print(table(f"tfprod bench graph: {report.title}", ["mode", "steps/s", "min–max",
                                                                "ms/step", "x TF1"],
                        report.rows()))
    console.print(f"[dim]x TF1: against {MODES[report.baseline]}; {steps} steps x {repeats} "
                  f"repeats, load average {report.load_average[0]:.2f}[/]", highlight=False)
    write_json(json_path, report.to_json())


def register(app: typer.Typer) -> None:
    """Add ``tfprod migrate code|model|check`` and ``tfprod bench graph`` to the root app."""
    migrate = typer.Typer(help="TF1 -> TF 2.21 / Keras 3: source code, models, checks.",
                          no_args_is_help=True)
    migrate.command("code")(code)
    migrate.command("model")(model)
    migrate.command("check")(check)
    app.add_typer(migrate, name="migrate")
    bench = group(app, "bench", "Benchmarks on this machine: training steps, execution modes.")
    bench.command("graph")(bench_graph)
