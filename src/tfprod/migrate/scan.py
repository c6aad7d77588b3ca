"""One pass of tfprod's rules over a module: findings, and the edits of the safe rewrites."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable

from tfprod.migrate import keras_api, rewrites
from tfprod.migrate.finding import AUTO, MANUAL
from tfprod.migrate.names import aliases, chain, dotted, module_name
from tfprod.migrate.rules import KERAS, KERAS_WHY, RULES, rule_for
from tfprod.migrate.source import Edit, Source

#: Keras 2 names that Keras 3 dropped -> what to use instead.
KERAS2 = {
    "backend.get_session": "no sessions in Keras 3: call the model directly, or in a "
                           "@tf.function",
    "backend.set_session": "no sessions in Keras 3: remove it",
    "layers.CuDNNLSTM": "keras.layers.LSTM (it uses cuDNN on a GPU by itself)",
    "layers.CuDNNGRU": "keras.layers.GRU (it uses cuDNN on a GPU by itself)",
    "experimental.export_saved_model": "model.export(path), or tfprod export",
    "experimental.load_from_saved_model": "tf.saved_model.load, or keras.layers.TFSMLayer",
    "layers.experimental.preprocessing": "keras.layers.<the same class>",
    "utils.track_tf1_style_variables": "a keras.layers.Layer or tf.Module that owns its "
                                       "variables (the decorator exists only in tf_keras)",
    "optimizers.legacy": "keras.optimizers.<the same class>",
    "layers.DenseFeatures": "keras.layers preprocessing (Normalization, StringLookup, ...) "
                            "or keras.utils.FeatureSpace",
}
_KERAS2_DEFAULT = "the Keras 3 API (keras.io/guides/migrating_to_keras_3)"


@dataclasses.dataclass(frozen=True)
class RawFinding:
    """A finding at a line of the scanned text (mapped to SRC lines by the caller)."""

    line: int
    col: int
    rule: str
    symbol: str
    what: str
    why: str
    replacement: str
    action: str


@dataclasses.dataclass
class Scan:
    findings: list[RawFinding]
    edits: list[Edit]


def _keras2_replacement(name: str) -> str:
    found = keras_api.keras_path(name)
    rest = ".".join(found[1]) if found else name
    for key, text in KERAS2.items():
        if rest == key or rest.startswith(key + "."):
            return text
    return _KERAS2_DEFAULT


class _Scanner:
    def __init__(self, src: Source, canonical: Callable[[str], str]):
        self.src = src
        self.canonical = canonical
        self.imported = aliases(src.tree)
        self.parents = {c: p for p in ast.walk(src.tree) for c in ast.iter_child_nodes(p)}
        self.findings: list[RawFinding] = []
        self.edits: list[Edit] = []
        tf_alias = next((k for k, v in self.imported.items() if v == "tf"), None)
        keras_alias = next((k for k, v in self.imported.items() if v == "keras"), None)
        self.keras_root = (f"{tf_alias}.keras" if tf_alias else keras_alias)

    def add(self, node: ast.AST, rule: str, symbol: str, what: str, why: str,
            replacement: str, action: str) -> None:
        self.findings.append(RawFinding(node.lineno, node.col_offset, rule, symbol, what, why,
                                        replacement, action))

    def add_rule(self, node: ast.AST, rule_id: str, name: str, symbol: str,
                 action: str | None = None, replacement: str | None = None,
                 why: str | None = None) -> None:
        rule = RULES[rule_id]
        self.add(node, rule.id, symbol, rule.what.format(symbol=symbol),
                 why or rule.why, replacement or rule.replacement_for(name),
                 action or rule.action)

    # ------------------------------------------------------------------ imports

    def visit_import(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            modules = [(a.name, module_name(a.name)) for a in node.names]
        elif node.module and not node.level:
            base = module_name(node.module)
            modules = [(node.module, base)]
            if base is not None:
                modules += [(f"{node.module}.{a.name}", f"{base}.{a.name}")
                            for a in node.names if a.name != "*"]
        else:
            return
        for written, name in modules:
            if name is None:
                continue
            rule = rule_for(self.canonical(name))
            if rule is not None and rule.id in ("contrib", "estimator"):
                self.add_rule(node, rule.id, name, written,
                              why=f"{rule.why}; the import itself fails")
                return
            if keras_api.keras_path(name) and name.count(".") >= 1 and name not in (
                    "tf.keras", "tf.compat.v1.keras"):
                obj, reason = keras_api.lookup(name)
                if obj is None:
                    self.add(node, KERAS, written, f"`{written}` does not exist in Keras 3 "
                             f"({reason}); the import fails", KERAS_WHY,
                             _keras2_replacement(name), MANUAL)
                    return

    # ------------------------------------------------------------------ names

    def visit_name(self, node: ast.Attribute | ast.Name) -> None:
        parent = self.parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            return  # only the whole chain counts
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            return
        name = dotted(node, self.imported)
        if name is None or "." not in name:
            return
        name = self.canonical(name)
        call = parent if isinstance(parent, ast.Call) and parent.func is node else None
        symbol = self.src.segment(node)
        rule = rule_for(name)
        if rule is not None:
            self.rule_use(node, rule.id, name, symbol, call)
        elif keras_api.keras_path(name):
            self.keras_use(node, name, symbol, call)

    def rule_use(self, node: ast.AST, rule_id: str, name: str, symbol: str,
                 call: ast.Call | None) -> None:
        if rule_id == "layers" and call is not None:
            function = name.rsplit(".", 1)[1]
            done = rewrites.stateless_layer(self.src, call, function, self.keras_root)
            if isinstance(done, tuple):
                edit, new = done
                self.edits.append(edit)
                self.add_rule(node, rule_id, name, symbol, action=AUTO, replacement=new)
                return
            self.add_rule(node, rule_id, name, symbol,
                          why=f"{RULES[rule_id].why}; not rewritten automatically: {done}")
            return
        self.add_rule(node, rule_id, name, symbol)

    def keras_use(self, node: ast.Attribute | ast.Name, name: str, symbol: str,
                  call: ast.Call | None) -> None:
        obj, reason = keras_api.lookup(name)
        if obj is None:
            legacy = node.value if isinstance(node, ast.Attribute) else None
            if ".optimizers.legacy." in name and isinstance(legacy, ast.Attribute):
                target = name.replace(".optimizers.legacy.", ".optimizers.")
                if keras_api.lookup(target)[0] is not None:  # `<...>.optimizers.legacy.X`
                    new_symbol = f"{self.src.segment(legacy.value)}.{node.attr}"
                    self.edits.append(self.src.replace(legacy, self.src.segment(legacy.value)))
                    self.add(node, KERAS, symbol, f"`{symbol}` raises ImportError: "
                             "keras.optimizers.legacy is not supported in Keras 3",
                             "tf_upgrade_v2 renames Keras optimizers to their Keras 2 legacy "
                             "classes, which exist only in tf_keras; the Keras 3 class takes "
                             "the same hyperparameters", new_symbol, AUTO)
                    if call is not None:
                        self.keyword_checks(call, keras_api.lookup(target)[0], new_symbol)
                    return
            self.add(node, KERAS, symbol, f"`{symbol}` does not exist in Keras 3 ({reason})",
                     KERAS_WHY, _keras2_replacement(name), MANUAL)
            return
        written = chain(node)
        if name.startswith("tf.compat.v1.keras") and written is not None \
                and self.imported.get(written[0].id) == "tf" \
                and written[1][:3] == ["compat", "v1", "keras"]:
            compat = node
            for _ in range(len(written[1]) - 3):
                compat = compat.value
            self.edits.append(self.src.replace(compat, f"{written[0].id}.keras"))
            new = f"{written[0].id}.keras." + ".".join(written[1][3:])
            self.add(node, KERAS, symbol, f"`{symbol}` is Keras 3's {new} under TF 2.21",
                     "tf.compat.v1.keras resolves to Keras 3 in TF 2.21; the compat.v1 "
                     "spelling promises Keras 2 behavior it no longer has", new, AUTO)
            symbol = new
        if call is not None:
            self.keyword_checks(call, obj, symbol)

    def keyword_checks(self, call: ast.Call, obj, symbol: str) -> None:
        """Keywords Keras 3 refuses or ignores; ``lr=`` is renamed (auto)."""
        names, closed = keras_api.accepted_keywords(obj)
        import keras

        optimizer = isinstance(obj, type) and issubclass(obj, keras.optimizers.Optimizer)
        for k in call.keywords:
            if k.arg is None:
                continue
            if k.arg == "lr" and "learning_rate" in names and "lr" not in names:
                self.edits.append(rewrites.rename_keyword(self.src, k, "learning_rate"))
                self.add(k, KERAS, f"{symbol}(lr=...)", "Keras 3 optimizers refuse `lr` "
                         "(ValueError: Argument(s) not recognized)", "Keras 2 accepted `lr` as "
                         "an alias of `learning_rate`; Keras 3 dropped it",
                         "learning_rate=", AUTO)
            elif k.arg == "decay" and optimizer:
                self.add(k, KERAS, f"{symbol}(decay=...)", "Keras 3 optimizers ignore `decay` "
                         "(a warning, then a constant learning rate)",
                         "Keras 2 optimizers decayed the rate as lr / (1 + decay * iterations)",
                         "learning_rate=keras.optimizers.schedules.InverseTimeDecay(lr, "
                         "decay_steps=1, decay_rate=decay), the same schedule", MANUAL)
            elif closed and k.arg not in names and k.arg != "lr":
                self.add(k, KERAS, f"{symbol}({k.arg}=...)", f"Keras 3's {symbol} takes no "
                         f"argument `{k.arg}` (TypeError/ValueError when called)", KERAS_WHY,
                         f"remove `{k.arg}` or use the Keras 3 argument for it", MANUAL)
        count = keras_api.positional_count(obj)
        if count is not None and len(call.args) > count:
            self.add(call, KERAS, symbol, f"Keras 3's {symbol} takes {count} positional "
                     f"arguments; {len(call.args)} are given", KERAS_WHY,
                     "keyword arguments, checked against the Keras 3 signature", MANUAL)

    # ------------------------------------------------------------------ calls

    def visit_call(self, node: ast.Call) -> None:
        for k in node.keywords:
            if k.arg == "feed_dict":
                func = self.src.segment(node.func)
                self.add(k, "session", f"{func}(feed_dict=...)", "feed_dict feeds placeholders "
                         "of a TF1 graph through a Session; TF2 has neither",
                         RULES["session"].why, RULES["session"].specific["feed_dict"], MANUAL)

    def run(self) -> Scan:
        for node in ast.walk(self.src.tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                self.visit_import(node)
            elif isinstance(node, ast.Attribute | ast.Name):
                self.visit_name(node)
            if isinstance(node, ast.Call):
                self.visit_call(node)
        self.findings.sort(key=lambda f: (f.line, f.col, f.rule))
        return Scan(self.findings, self.edits)


def scan(src: Source, canonical: Callable[[str], str] = lambda name: name) -> Scan:
    """tfprod's rules over one parsed module.

    Args:
        src: the module (after ``tf_upgrade_v2``).
        canonical: maps a dotted name to the spelling the rules use (``tf_upgrade_v2``'s rename
            table, for files it could not process).
    """
    return _Scanner(src, canonical).run()
