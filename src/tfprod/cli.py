"""`tfprod <verb>`: parses arguments, calls the library, prints tables. Nothing else lives here.

TensorFlow is imported only inside verbs (``tfprod --help`` answers at once), with its start-up
log noise off unless ``--verbose``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from tfprod.errors import TfprodError

console = Console()
err_console = Console(stderr=True)
_state: dict[str, Any] = {"verbose": False, "argv": None}

app = typer.Typer(
    help="tfprod: the production toolkit for TensorFlow 2.21 / Keras 3.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Data: sample sets, inspection, pipeline benchmarks.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
bench_app = typer.Typer(help="Benchmarks: training-step speed.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="TensorFlow's logs and full tracebacks."),
) -> None:
    """tfprod: the production toolkit for TensorFlow 2.21 / Keras 3."""
    _state["verbose"] = verbose


def _tf() -> None:
    from tfprod import runtime

    runtime.configure(verbose=_state["verbose"])


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=err_console,
                    transient=True)


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    err_console.print(f"[dim]wrote {path}[/]")


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[escape(str(v)) for v in r])
    return table


# ---------------------------------------------------------------------------------- quickstart


@app.command()
def quickstart(
    out: Path = typer.Option(Path("tfprod-quickstart"), help="Folder for everything it makes."),
    epochs: int = typer.Option(8, help="Training epochs."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Run the main job end to end on sample digits: data, pipeline, doctor, training, export,
    optimize, and serving over TF Serving's REST API.

    Example: [bold]tfprod quickstart --out /tmp/qs --epochs 5[/]
    """
    _tf()
    from tfprod import quickstart as qs

    rows: list[list[Any]] = []

    def on_stage(row: dict[str, Any]) -> None:
        rows.append([row["stage"], f"{row['seconds']:.1f}", row["result"]])
        err_console.print(f"[green]done[/] {row['stage']} ({row['seconds']:.1f} s)")

    result = qs.run(out, epochs=epochs, console=err_console, on_stage=on_stage)
    console.print(_table("tfprod quickstart", ["stage", "seconds", "result"], rows))
    report = result.optimize
    console.print(_table(f"variants of the model ({report.test_examples} test examples, float "
                         f"{report.metric} {report.reference:.2f}; tfprod optimize builds more)",
                         report.columns, report.rows))
    console.print(_table("artifacts", ["what", "where / how to open"],
                         [[k, v] for k, v in result.artifacts.items()]))
    console.print(f"test accuracy [bold]{result.test_accuracy:.4f}[/] in {result.seconds:.0f} s")
    _write_json(json_path, result.to_json())


# ---------------------------------------------------------------------------------------- data


@data_app.command("sample")
def data_sample(
    out: Path = typer.Argument(..., help="Output folder."),
    fmt: str = typer.Option("png", "--format", "-f", help="png | jpeg | tfrecord | csv"),
    size: int = typer.Option(32, help="Side of the square images (png/jpeg/tfrecord)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
) -> None:
    """Write the sample digits (shipped with scikit-learn) as image folders, TFRecords or CSV.

    Example: [bold]tfprod data sample /tmp/digits --format jpeg --size 64[/]
    """
    _tf()
    from tfprod.data import write_sample

    with _progress() as p:
        p.add_task(f"writing digits as {fmt}", total=None)
        paths = write_sample(out, fmt, image_size=size, overwrite=overwrite)
    console.print(_table(f"sample digits ({fmt})", ["split", "path"],
                         [[k, v] for k, v in paths.items()]))


def _print_inspect(report) -> None:
    rows = []
    for s in report.features + ([report.label] if report.label else []):
        shape = "x".join("?" if d is None else str(d) for d in s.shape) or "scalar"
        fmt = (lambda v: f"{v:.4g}") if s.dtype not in ("string", "bytes") else (lambda v: "-")
        rows.append([s.name, s.dtype, shape, fmt(s.min), fmt(s.max), fmt(s.mean), fmt(s.std),
                     s.nan, s.inf])
    console.print(_table(f"{report.source}: {report.num_examples} examples",
                         ["feature", "dtype", "shape", "min", "max", "mean", "std", "NaN", "Inf"],
                         rows))
    if report.class_counts:
        names = report.class_names
        total = report.num_examples
        console.print(_table("class balance", ["label", "name", "count", "%"], [
            [k, names[k] if names and 0 <= k < len(names) else "", v, f"{100 * v / total:.1f}"]
            for k, v in sorted(report.class_counts.items())]))
    console.print(f"duplicates: {report.duplicates}")
    if report.findings:
        style = {"error": "red", "warning": "yellow", "info": "cyan"}
        table = Table(title="findings", title_justify="left")
        for c in ("severity", "finding", "fix"):
            table.add_column(c, overflow="fold")
        for f in report.findings:
            table.add_row(f"[{style[f.severity]}]{f.severity}[/]", escape(f.message), escape(f.fix))
        console.print(table)
    else:
        console.print("[green]no findings[/]")


@data_app.command("inspect")
def data_inspect(
    path: Path = typer.Argument(..., help="Image folder, TFRecord folder or .csv file."),
    label: str | None = typer.Option(None, help="Label feature/column (TFRecord, CSV)."),
    num_classes: int | None = typer.Option(None, help="Flag labels outside [0, N)."),
    ignore_errors: bool = typer.Option(False, help="Skip unreadable files/records; report them."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Shapes, dtypes, ranges, NaN/Inf, class balance, duplicates, and what to fix.

    Exits with status 1 when an error-severity finding exists (usable in CI).

    Example: [bold]tfprod data inspect data/train.csv --label label --num-classes 10[/]
    """
    _tf()
    from tfprod.data import inspect_path

    with _progress() as p:
        task = p.add_task(f"inspecting {path}", total=None)
        report = inspect_path(path, label=label, num_classes=num_classes,
                              ignore_errors=ignore_errors,
                              progress=lambda n: p.update(task, completed=n))
    _print_inspect(report)
    _write_json(json_path, report.to_json())
    if report.has_errors:
        raise typer.Exit(1)


@data_app.command("bench")
def data_bench(
    path: Path = typer.Argument(..., help="Image folder or TFRecord folder."),
    image_size: int = typer.Option(64, help="Side of the square output images."),
    batch_size: int = typer.Option(64, help="Batch size."),
    repeats: int = typer.Option(1, help="Runs per pipeline; the median is reported."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Examples/s of a naive pipeline, Keras' loader and tfprod's, epochs 1 and 2, vs decode.

    Example: [bold]tfprod data bench /tmp/digits/train --image-size 32[/]
    """
    _tf()
    from tfprod.data.bench import bench_path

    with _progress() as p:
        task = p.add_task(f"benchmarking {path}", total=None)
        report = bench_path(path, image_size=(image_size, image_size), batch_size=batch_size,
                            repeats=repeats,
                            progress=lambda name, i, n: p.update(task, description=name,
                                                                 completed=i, total=n))
    console.print(_table(report.title, report.columns, report.rows))
    _write_json(json_path, report.to_json())


# --------------------------------------------------------------------------------------- train


@app.command()
def train(
    model: str = typer.Option(..., help="Preset (mlp, cnn), module:function, or a .keras file."),
    data: str = typer.Option(..., help="Image folder, TFRecord folder or .csv file."),
    epochs: int = typer.Option(5, help="Epochs."),
    batch_size: int = typer.Option(32, help="Global batch size (split across replicas)."),
    strategy: str = typer.Option("auto", help="auto | one | mirrored | multi-worker | ps"),
    workers: int = typer.Option(0, help="Launch N local workers (multi-worker / ps)."),
    label: str | None = typer.Option(None, help="Label feature/column (TFRecord, CSV)."),
    image_size: int = typer.Option(32, help="Side of square images (image folders)."),
    logdir: str = typer.Option("runs", help="TensorBoard log folder."),
    checkpoint_dir: str | None = typer.Option(None, help="Checkpoint folder (enables --resume)."),
    resume: bool = typer.Option(False, help="Continue from the latest checkpoint."),
    accumulate: int = typer.Option(1, help="Gradient accumulation: micro-batches per update."),
    clip_norm: float | None = typer.Option(None, help="Clip gradients to this global norm."),
    mixed_precision: str | None = typer.Option(None, help="mixed_float16 | mixed_bfloat16"),
    jit: bool = typer.Option(False, help="Compile the step with XLA."),
    learning_rate: float = typer.Option(1e-3, help="Learning rate of the presets."),
    save: str | None = typer.Option(None, help="Save the trained model (.keras)."),
    cluster_timeout: float = typer.Option(60.0, help="Seconds to wait for the other tasks."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the result as JSON."),
) -> None:
    """Train a model under any tf.distribute strategy, with TensorBoard logs and checkpoints.

    Example: [bold]tfprod train --model cnn --data digits/train --strategy mirrored --epochs 3[/]
    Multi-worker on this machine: [bold]tfprod train --model cnn --data digits/train
    --strategy multi-worker --workers 2[/]
    """
    _tf()  # before any tfprod.train import, which imports TensorFlow
    from tfprod.train.cluster import launch_local, strip_workers_flag
    from tfprod.train.run import TrainConfig

    if mixed_precision not in (None, "mixed_float16", "mixed_bfloat16"):
        raise TfprodError(f"--mixed-precision {mixed_precision}; expected mixed_float16 or "
                          "mixed_bfloat16")
    config = TrainConfig(
        model=model, data=data, epochs=epochs, batch_size=batch_size, strategy=strategy,
        label=label, image_size=image_size, logdir=logdir, checkpoint_dir=checkpoint_dir,
        resume=resume, accumulation_steps=accumulate, clip_norm=clip_norm,
        mixed_precision=mixed_precision, jit_compile=jit, learning_rate=learning_rate,
        save=save, cluster_timeout=cluster_timeout)

    def run_here() -> None:
        from tfprod.train.run import run_training, worker_json_path

        result = run_training(config, console=err_console)
        rows = [[k, " -> ".join(f"{v:.4f}" for v in (vs[0], vs[-1]))]
                for k, vs in result.history.items()]
        console.print(_table(f"tfprod train ({result.strategy}, {result.replicas} replica(s), "
                             f"{result.task})", ["metric", "first -> last epoch"], rows))
        if result.saved:
            console.print(f"saved {result.saved}")
        console.print(f"TensorBoard: tensorboard --logdir {logdir}")
        _write_json(worker_json_path(json_path), result.to_json())

    if workers:
        argv = strip_workers_flag(sys.argv[1:] if _state["argv"] is None else _state["argv"])
        launch_local(argv, workers=workers, strategy=strategy, logdir=logdir,
                     run_chief=run_here)
    else:
        run_here()


# -------------------------------------------------------------------------------------- doctor


def _print_doctor(report) -> None:
    style = {"error": "red", "warning": "yellow", "info": "cyan"}
    title = (f"tfprod doctor: {report.model} ({report.mode} mode, {report.num_examples} "
             f"examples, {report.seconds.get('total', 0):.1f} s)")
    if report.findings:
        table = Table(title=title, title_justify="left", show_lines=True)
        for c in ("#", "severity", "finding", "evidence", "fix"):
            table.add_column(c, overflow="fold")
        for i, f in enumerate(report.findings, 1):
            table.add_row(str(i), f"[{style[f.severity]}]{f.severity}[/]",
                          f"[bold]{escape(f.title)}[/]\n[dim]{f.check}, {f.kind}[/]",
                          escape(f.evidence), escape(f.fix))
        console.print(table)
    else:
        console.print(f"{title}\n[green]no findings[/]")
    console.print(f"[dim]passed: {', '.join(report.passed) or '-'}[/]")
    for check, why in report.skipped.items():
        console.print(f"[dim]skipped {check}: {escape(why)}[/]")
    for what, path in report.artifacts.items():
        console.print(f"{what}: {path}")


@app.command()
def doctor(
    model: str = typer.Option(..., help="module:function or a .keras file."),
    data: Path = typer.Option(..., help="Image folder, TFRecord folder or .csv file."),
    label: str | None = typer.Option(None, help="Label feature/column (TFRecord, CSV)."),
    loss: str | None = typer.Option(None, help="Loss for an uncompiled model, e.g. "
                                               "sparse_categorical_crossentropy."),
    batch_size: int = typer.Option(32, help="Batch size."),
    full: bool = typer.Option(False, "--full", help="Also the learning-rate range test and a "
                                                    "short training watch (about a minute)."),
    plot: Path = typer.Option(Path("doctor-lr-range.png"),
                              help="Where --full writes the learning-rate curve (PNG)."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
    markdown: Path | None = typer.Option(None, "--markdown",
                                         help="Also write the report as Markdown."),
) -> None:
    """Why is the model not learning? Ranked causes with the evidence and the fix.

    Checks the data, the loss against the output, gradient flow, dead units, the labels'
    signal, the learning rate, and whether one batch can be overfit; --full adds a
    learning-rate range test and a short training watch. Exits with status 1 when an
    error-severity finding exists (usable in CI).

    Example: [bold]tfprod doctor --model model.keras --data /tmp/digits/train --full[/]
    """
    _tf()
    from tfprod.doctor import diagnose, load_data, load_model

    with _progress() as p:
        task = p.add_task(f"loading {model}", total=None)
        net = load_model(model)
        dataset = load_data(data, model=net, label=label, batch_size=batch_size)
        report = diagnose(net, dataset, mode="full" if full else "quick", loss=loss,
                          plot=plot if full else None,
                          progress=lambda name: p.update(task, description=name))
    _print_doctor(report)
    _write_json(json_path, report.to_json())
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(report.to_markdown())
        err_console.print(f"[dim]wrote {markdown}[/]")
    if report.has_errors:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------- profile


@app.command()
def profile(
    model: str = typer.Option(..., help="Preset (mlp, cnn), module:function, or a .keras file."),
    data: Path = typer.Option(..., help="Image folder (one subfolder per class)."),
    steps: int = typer.Option(50, help="Timed training steps."),
    warmup: int = typer.Option(5, help="Untimed steps first (tracing)."),
    batch_size: int = typer.Option(32, help="Batch size."),
    image_size: int = typer.Option(32, help="Side of square images (presets)."),
    logdir: Path | None = typer.Option(None, help="Also record a tf.profiler trace here."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Is training input-bound or compute-bound? Times data waits vs the step; names the fix.

    With --logdir the timed steps are also traced by tf.profiler; view them with TensorBoard's
    profile plugin (pip install tensorboard-plugin-profile; tensorboard --logdir LOGDIR).

    Example: [bold]tfprod profile --model cnn --data /tmp/digits/train --logdir runs/profile[/]
    """
    _tf()
    from tfprod.train.profile import load_for_profile, profile_training

    with _progress() as p:
        p.add_task(f"loading {data}", total=None)
        net, ds = load_for_profile(model, data, batch_size=batch_size, image_size=image_size)
        p.add_task(f"profiling {warmup} + {steps} steps", total=None)
        report = profile_training(net, ds, steps=steps, warmup=warmup, logdir=logdir)
    console.print(_table(f"tfprod profile: {net.name} on {data}", report.columns, report.rows))
    style = {"input-bound": "red", "compute-bound": "green", "balanced": "yellow"}
    console.print(f"verdict: [{style[report.verdict]}]{report.verdict}[/]")
    _write_json(json_path, report.to_json())


# --------------------------------------------------------------------------------------- bench


@bench_app.command("step")
def bench_step(
    model: str = typer.Option("mlp", help="mlp (784-128-10), cnn (small_cnn, 32x32x1), "
                                          "module:function, or a .keras file."),
    batch_size: int = typer.Option(32, help="Batch size (random data, nothing downloaded)."),
    steps: int = typer.Option(200, help="Timed steps per run."),
    repeats: int = typer.Option(3, help="Runs per variant; the median is reported."),
    variants: str = typer.Option("eager,function,xla,function_loop,xla_loop,mixed,fit,trainer",
                                 help="Comma-separated subset to run."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Training steps/s of one model: eager, tf.function, XLA, mixed precision, fit, Trainer.

    Example: [bold]tfprod bench step --model mlp --steps 200 --repeats 3[/]
    """
    _tf()
    from tfprod.train import step_bench

    model_fn, batch = step_bench.benchmark_inputs(model, batch_size)
    chosen = [v.strip() for v in variants.split(",") if v.strip()]
    with _progress() as p:
        task = p.add_task("warming up (tracing, XLA compilation)", total=None)
        report = step_bench.bench_step(
            model_fn, batch, steps=steps, repeats=repeats, variants=chosen,
            progress=lambda name, i, n: p.update(task, description=name, completed=i, total=n))
    console.print(_table(report.title, report.columns, report.rows))
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/]", highlight=False)
    _write_json(json_path, report.to_json())


# ------------------------------------------------------------------------------------ main


class _Warnings:
    """Prints tfprod's warnings (e.g. skipped records) as one yellow line; others if verbose."""

    def __call__(self, message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("tfprod"):
            err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False,
                              soft_wrap=True)
        elif _state["verbose"]:
            err_console.print(f"[yellow]warning[/] {category.__name__}: {escape(str(message))} "
                              f"({filename}:{lineno})", highlight=False, soft_wrap=True)


def _register_commands() -> None:
    from tfprod import commands

    for name in commands.MODULES:
        importlib.import_module(f"tfprod.commands.{name}").register(app)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tfprod`` command."""
    warnings.showwarning = _Warnings()
    args = sys.argv[1:] if argv is None else argv
    _state["argv"] = list(args)
    _state["verbose"] = "--verbose" in args or "-v" in args
    try:
        app(args=args, prog_name="tfprod", standalone_mode=True)
    except SystemExit:
        raise
    except TfprodError as e:
        if _state["verbose"]:
            err_console.print_exception()
        err_console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        raise SystemExit(130) from None
    except Exception as e:
        if _state["verbose"]:
            err_console.print_exception()
        first = (getattr(e, "message", None) or str(e)).strip().splitlines()
        detail = first[0] if first else type(e).__name__
        err_console.print(f"[red]error:[/] {type(e).__name__}: {escape(detail)} "
                          "(run with --verbose for the traceback)", highlight=False,
                          soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
