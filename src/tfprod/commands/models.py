"""``tfprod models``: the model-building scenarios, trained, measured and exported end to end."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from tfprod.commands import group
from tfprod.console import console, progress, table, tf, write_json
from tfprod.errors import TfprodError


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def models_recommender(
    data: str = typer.Option("synthetic", help="'synthetic' (generated: known low-rank "
                                               "preferences + popularity skew) or a MovieLens "
                                               "ratings file (u.data, ratings.dat, ratings.csv)."),
    objective: str = typer.Option("implicit", help="implicit (in-batch softmax, logQ "
                                                   "corrected) | ratings (MSE)."),
    users: int = typer.Option(2000, help="Synthetic users."),
    items: int = typer.Option(1000, help="Synthetic items."),
    dim: int = typer.Option(16, help="Embedding width."),
    epochs: int = typer.Option(10, help="Training epochs."),
    k: int = typer.Option(10, help="Top-k of the evaluation and of the `recommend` signature."),
    cold_users: float = typer.Option(0.05, help="Share of users held out entirely (cold "
                                                "start)."),
    seed: int = typer.Option(0, help="Data, split and training seed."),
    export: Path | None = typer.Option(None, help="Export the model to BASE/<version>/ "
                                                  "(serving_default + recommend)."),
    save: Path | None = typer.Option(None, help="Also save the trained model (.keras)."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Train a matrix-factorization recommender and compare its top-k with popularity.

    recall@k and NDCG@k on each user's held-out latest interactions, against ranking by
    training popularity, for all test users and for the cold-start ones (they get the
    popular items). --export writes a SavedModel whose `recommend` signature serves the top k.

    Example: [bold]tfprod models recommender --export models/rec[/]
    """
    if objective not in ("implicit", "ratings"):
        raise TfprodError(f"--objective {objective!r}; expected implicit or ratings")
    tf()
    import numpy as np

    from tfprod.data.interactions import read_movielens, synthetic_interactions
    from tfprod.models import (
        evaluate_ranking,
        model_recommender,
        popularity_recommender,
        train_recommender,
    )

    with progress() as p:
        task = p.add_task("preparing interactions", total=None)
        interactions = (synthetic_interactions(users, items, seed=seed) if data == "synthetic"
                        else read_movielens(data))
        train, test = interactions.split(0.2, cold_users=cold_users, seed=seed)
        p.update(task, description=f"training ({objective}, {epochs} epochs)")
        model = train_recommender(train, objective=objective, dim=dim, epochs=epochs,
                                  seed=seed)
        p.update(task, description="evaluating")
        results = evaluate_ranking({"model": model_recommender(model),
                                    "popularity": popularity_recommender(train)},
                                   train, test, k=k)
        exported = None
        if export is not None:
            from tfprod.export.recommender import export_recommender

            p.update(task, description=f"exporting to {export}")
            exported = export_recommender(model, export, k=k, reference=train)
        if save is not None:
            model.save(save)
    pop = {r.name.replace("popularity", ""): r for r in results if "popularity" in r.name}
    rows = []
    for r in results:
        base = pop.get(r.name.replace("model", ""))
        ratio = f"{r.recall / base.recall:.2f}x" if "model" in r.name and base and \
            base.recall else ""
        rows.append([r.name, f"{r.users:,}", _pct(r.recall), _pct(r.ndcg), ratio])
    source = "synthetic" if data == "synthetic" else data
    console.print(table(f"tfprod models recommender: {source}, {interactions.num_users:,} users "
                        f"x {interactions.num_items:,} items, {len(train):,} train / "
                        f"{len(test):,} test interactions, objective {objective}",
                        ["recommender", "users", f"recall@{k}", f"NDCG@{k}", "vs pop"], rows))
    report: dict = {"objective": objective, "k": k, "results": [r.__dict__ for r in results]}
    if objective == "ratings" and test.ratings is not None:
        x = {"user_id": test.users, "item_id": test.items}
        predicted = model.predict(x, batch_size=4096, verbose=0)
        rmse = float(np.sqrt(np.mean((predicted - test.ratings) ** 2)))
        mean = float(np.sqrt(np.mean((train.ratings.mean() - test.ratings) ** 2)))
        console.print(f"ratings RMSE on held-out interactions: model {rmse:.3f}, global mean "
                      f"{mean:.3f}", highlight=False)
        report.update(rmse=rmse, rmse_global_mean=mean)
    if exported is not None:
        console.print(f"exported {exported.path}: signatures {', '.join(exported.endpoints)}",
                      highlight=False)
        report["export"] = exported.path
    write_json(json_path, report)


def _export_probe(style: str, *, called: bool) -> None:
    """Exports the style's model with tfprod's exporter and no hand-written signature."""
    import tempfile

    import numpy as np

    from tfprod.export.savedmodel import build_archive
    from tfprod.models.styles import BUILDERS, INPUT_SHAPE

    model = BUILDERS[style]()
    if called:
        model(np.zeros((1, *INPUT_SHAPE), "float32"))
    with tempfile.TemporaryDirectory() as tmp:
        build_archive(model).write_out(tmp, verbose=False)


#: The export rows of the styles table (the exporter is a later stage than the models).
EXPORT_PROBES = {
    "export, no input signature, unbuilt": lambda s: _export_probe(s, called=False),
    "export, no input signature, after 1 call": lambda s: _export_probe(s, called=True),
}


def models_styles(
    export: Path | None = typer.Option(None, help="Export each style to DIR/<style>/1/."),
    epochs: int = typer.Option(3, help="Training epochs of the functional model (the others "
                                       "take its weights)."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """One CNN as a Sequential, a Functional and a subclassed model, side by side.

    Probes what each style can and cannot do (each cell is the outcome of doing it), trains
    the functional one on the sample digits, copies its weights into the other two and shows
    that all three answer the same; --export exports each (the subclassed one without a
    hand-written input signature).

    Example: [bold]tfprod models styles --export models/styles[/]
    """
    tf()
    import numpy as np

    from tfprod.data.sample import load_digits
    from tfprod.models.styles import STYLES, build_style, capabilities, share_weights

    with progress() as p:
        task = p.add_task("probing the three styles", total=None)
        probes = capabilities(EXPORT_PROBES)
        p.update(task, description="training the functional model")
        (x_train, y_train), (x_test, y_test) = load_digits(8)
        models = {s: build_style(s) for s in STYLES}
        models["functional"].fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
        share_weights(models["functional"], models["sequential"], models["subclassed"])
        outputs = {s: m.predict(x_test, verbose=0) for s, m in models.items()}
        exported = {}
        if export is not None:
            from tfprod.export import export_saved_model

            for style, model in models.items():
                p.update(task, description=f"exporting {style}")
                exported[style] = export_saved_model(model, export / style, version=1,
                                                     overwrite=True,
                                                     reference_data=(x_test, y_test)).path
    rows = [[name, *(str(by_style[s]) for s in STYLES)] for name, by_style in probes.items()]
    console.print(table("what each style can do (each cell: tried)", ["capability", *STYLES],
                        rows))
    for name, by_style in probes.items():
        for style, probe in by_style.items():
            if probe.note:
                console.print(f"[dim]{style}, {name}: {escape(probe.note)}[/]", highlight=False)
    ref = outputs["functional"]
    same = [[s, f"{float(np.mean(o.argmax(1) == y_test)):.3f}",
             f"{float(np.abs(o - ref).max()):.1e}", exported.get(s, "")]
            for s, o in outputs.items()]
    console.print(table(f"same weights, same answers ({len(x_test)} test digits)",
                        ["style", "accuracy", "max |diff|", "exported"], same))
    write_json(json_path, {"capabilities": {n: {s: vars(p) for s, p in b.items()}
                                            for n, b in probes.items()},
                           "equivalence": same, "exported": exported})


def models_sequence(
    sequences: int = typer.Option(2000, help="Training sequences (test: a quarter as many)."),
    max_length: int = typer.Option(200, help="The longest sequence (the long tail's end)."),
    median: int = typer.Option(20, help="Median sequence length."),
    epochs: int = typer.Option(5, help="Epochs per strategy (the first is not timed)."),
    batch_size: int = typer.Option(64, help="Sequences per batch."),
    units: int = typer.Option(32, help="GRU units per direction."),
    export: Path | None = typer.Option(None, help="Export the bucketed model to "
                                                  "BASE/<version>/ (variable-length lists in)."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Train a masking-aware sequence classifier with pad-to-max and with bucketing.

    The generated task's label depends on the content and the length (is the key token in
    the first or the second half?); lengths are log-normal (a long tail). Same initial
    weights, same epochs: training speed, padding waste and test accuracy side by side.
    --export serves variable-length lists.

    Example: [bold]tfprod models sequence --export models/seq[/]
    """
    tf()
    import numpy as np

    from tfprod.data.sequence_task import sequence_task
    from tfprod.models.sequence import compare_batching

    train = sequence_task(sequences, median=median, max_length=max_length, seed=0)
    test = sequence_task(max(sequences // 4, 1), median=median, max_length=max_length, seed=1)
    lengths = np.array([len(s) for s in train[0]])
    with progress() as p:
        p.add_task(f"training twice ({epochs} epochs each)", total=None)
        runs = compare_batching(train, test, vocab_size=50, num_classes=3, epochs=epochs,
                                batch_size=batch_size, units=units)
        exported = None
        if export is not None:
            from tfprod.export import export_saved_model
            from tfprod.export.ragged import RaggedInput

            exported = export_saved_model(
                runs[-1].model, export, reference_data=test,
                ragged_inputs={"tokens": RaggedInput(max_length=max_length)}).path
    base = runs[0].steps_per_s
    out = [[r.strategy, f"{r.steps_per_s:.2f}", f"{r.steps_per_s / base:.2f}x",
            f"{r.sequences_per_s:,.0f}", f"{r.waste_pct:.1f}%", f"{r.accuracy:.1f}%"]
           for r in runs]
    console.print(table(
        f"tfprod models sequence: {len(train[0]):,} sequences, lengths median "
        f"{np.median(lengths):.0f}, p99 {np.percentile(lengths, 99):.0f}, max "
        f"{lengths.max()}", ["batching", "steps/s", "speed", "seq/s", "padding", "accuracy"],
        out))
    if exported is not None:
        console.print(f"exported {exported}: serving_default takes tokens.values + "
                      "tokens.row_lengths (or lists through tfprod serve)", highlight=False)
    write_json(json_path, {"runs": [r.to_json() for r in runs], "export": exported})


def register(app: typer.Typer) -> None:
    """Adds ``tfprod models recommender|styles|sequence``."""
    models = group(app, "models", "The model-building scenarios: recommender, the three Keras "
                                  "styles, variable-length sequences.")
    models.command("recommender")(models_recommender)
    models.command("styles")(models_styles)
    models.command("sequence")(models_sequence)
