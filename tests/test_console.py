"""The shared terminal tables: readable at 80 columns, nothing cut mid-word, full width used."""

import pytest
from rich.console import Console

from tfprod.console import table

VARIANTS = (["variant", "file size", "gzip size", "batch-1 p50", "batch-1 p99", "batch-64 /s",
             "accuracy", "change vs float"],
            [["keras", "1.8 MB", "1.6 MB", "855 µs", "1.35 ms", "10,837", "92.48", "+0.00"],
             ["pruned80-int8", "155.5 KB", "52.2 KB", "37 µs", "82 µs", "12,787", "92.76",
              "+0.28"]])


def render(columns, rows, width):
    console = Console(width=width, record=True, color_system=None)
    console.print(table("t", columns, rows, width=width))
    return console.export_text()


@pytest.mark.parametrize("width", [80, 100, 160])
def test_no_word_or_number_is_cut_and_nothing_overflows(width):
    columns, rows = VARIANTS
    text = render(columns, rows, width)
    lines = text.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width
    for word in {w for c in columns for w in c.split()}:
        assert word in text, f"header word {word!r} was cut at {width} columns"
    for row in rows:
        line = next(line for line in lines if row[0] in line)
        for cell in row:  # every cell of a row on one line: numbers never wrap
            assert cell in line, f"{cell!r} wrapped at {width} columns"


def test_full_width_keeps_borders_and_one_line_headers():
    columns, rows = VARIANTS
    text = render(columns, rows, 160)
    assert "┃ change vs float ┃" in text and "│ keras " in text
    narrow = render(columns, rows, 80)
    assert "┃" not in narrow  # the borderless layout is what fits at 80


def test_long_paths_fold_instead_of_pushing_columns_out():
    path = "/tmp/quickstart/models/digits/" + "x" * 60
    text = render(["what", "where"], [["SavedModel", path]], 80)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
    assert "SavedModel" in text and text.count("x") == 60  # folded, none lost


def test_markup_in_cells_is_printed_literally():
    text = render(["name"], [["[red]x[/]"]], 80)
    assert "[red]x[/]" in text
