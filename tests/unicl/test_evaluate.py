"""The evaluation table (unicl/evaluate.py): rows, JSON round trip, Markdown layout."""

import json

import pytest

from unicl.evaluate import (
    BASELINE_BACKGROUND,
    MODEL,
    EvalTable,
    Row,
    check_shots,
    load_table,
)


def _table():
    table = EvalTable(task="segmentation", run="runs/x")
    table.rows += [
        Row(MODEL, 1, "seen", 10, {"miou": 51.234, "mae": 0.1234}),
        Row(MODEL, 1, "unseen", 4, {"miou": 20.5, "mae": 0.2}),
        Row(BASELINE_BACKGROUND, 1, "seen", 10, {"miou": 0.0, "mae": 0.3}),
    ]
    return table


def test_markdown_layout():
    md = _table().to_markdown().splitlines()
    assert md[0] == (
        "| method | shots | seen mIoU | seen MAE | seen n | unseen mIoU | unseen MAE | unseen n |"
    )
    assert md[2] == "| model | 1 | 51.23 | 0.123 | 10 | 20.50 | 0.200 | 4 |"
    # a split without a row shows dashes, not zeros
    assert md[3] == "| all background | 1 | 0.00 | 0.300 | 10 | - | - | - |"


def test_json_round_trip(tmp_path):
    table = _table()
    json_path, md_path = table.save(tmp_path)
    assert json_path.name == "eval_segmentation.json" and md_path.read_text().startswith("# ")
    back = load_table(json_path)
    assert back.to_json() == json.loads(json_path.read_text()) == table.to_json()
    assert back.get(MODEL, 1, "unseen").metrics["miou"] == 20.5
    assert back.get(MODEL, 2, "seen") is None


def test_check_shots():
    assert check_shots([3, 0, 1, 1]) == [0, 1, 3]
    with pytest.raises(ValueError, match="shots"):
        check_shots([4])
    with pytest.raises(ValueError, match="shots"):
        check_shots([])
