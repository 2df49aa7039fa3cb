"""CSV text that spreadsheets cannot run: every CSV birdshield writes escapes formula cells."""

from __future__ import annotations

import csv
import io

import pytest

from birdshield.reporting.tables import csv_text, spreadsheet_safe


@pytest.mark.parametrize(
    "cell",
    ["=1+1", '=HYPERLINK("http://x")', "+cmd", "-2+3", "@SUM(A1)", "\tx", "\r=1", "-", "+", "-inf!"],
)
def test_formula_cells_get_an_apostrophe(cell: str) -> None:
    assert spreadsheet_safe(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["bird", "a=b", " =1", "'=1", "0.5", "-0.5", "+1", "-1e-05", "1E3", ""])
def test_harmless_cells_and_plain_numbers_are_kept(cell: str) -> None:
    assert spreadsheet_safe(cell) == cell


def test_csv_text_escapes_every_cell_and_stays_parseable() -> None:
    text = csv_text([["image", "species"], ["=evil.jpg", "@bird, with comma"], [None, -0.25]])
    assert text.splitlines()[0] == "image,species"
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["image", "species"], ["'=evil.jpg", "'@bird, with comma"], ["", "-0.25"]]


def test_predictions_csv_escapes_file_and_species_names() -> None:
    from birdshield.inference import to_csv

    rows = [{"image": "=x.jpg", "top": [("-bird", 0.5), ("+b", 0.25)], "error": ""}]
    assert to_csv(rows, top_k=2).splitlines()[1] == "'=x.jpg,'-bird,0.5000,'+b,0.2500,"
    assert to_csv(rows, grading=True).splitlines() == ["image,specie", "'=x.jpg,'-bird"]
