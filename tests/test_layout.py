"""One home per thing, read from the code's own imports: data flows one way between stages, no
two modules import each other, and what a stage owns is imported from that stage."""

import ast
import pathlib

SRC = pathlib.Path(__file__).parents[1] / "src"
# DESIGN.md's order: a stage may import an earlier one, never a later one.
STAGES = ["data", "models", "train", "doctor", "export", "optimize", "serve", "monitor", "online",
          "rl", "migrate"]
# Cycles that predate this check, each through imports inside functions; none may be added.
KNOWN_CYCLES = {("tfprod.serve.litert", "tfprod.serve.servable"),
                ("tfprod.monitor.datasets", "tfprod.monitor.profile")}


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in (SRC / "tfprod").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: pathlib.Path, known: dict) -> set[str]:
    """Every tfprod module ``name`` imports: at the top, inside functions, for type checking."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_no_stage_imports_a_later_one():
    later = [(a, b) for a, targets in graph().items() for b in targets
             if stage(a) and stage(b) and STAGES.index(stage(b)) > STAGES.index(stage(a))]
    assert not later


def test_no_two_modules_import_each_other():
    g = graph()
    faces = {m for m, p in modules().items() if p.name == "__init__.py"}  # faces re-export
    cycles = {tuple(sorted((a, b))) for a in g for b in g[a]
              if a in g.get(b, ()) and not {a, b} & faces}
    assert cycles <= KNOWN_CYCLES, cycles - KNOWN_CYCLES
    assert ("tfprod.train.parameter_server", "tfprod.train.trainer") not in cycles


def test_loading_a_model_and_its_data_lives_in_models():
    g = graph()
    assert "tfprod.doctor.sources" not in g
    for verb in ("doctor", "export", "optimize"):
        uses = g[f"tfprod.commands.{verb}"]
        assert uses & {"tfprod.models", "tfprod.models.loading", "tfprod.models.model_data"}
    # Nothing but the doctor verb and the quickstart reaches into tfprod.doctor.
    users = {a for a, targets in g.items() for b in targets
             if stage(b) == "doctor" and stage(a) != "doctor"}
    assert users <= {"tfprod.commands.doctor", "tfprod.quickstart"}, users
