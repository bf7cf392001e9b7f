"""The feedback CSV writer and the validation of a report."""

from __future__ import annotations

import csv
import multiprocessing
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.errors import BadRequest
from gateway.feedback import HEADER, FeedbackEntry, FeedbackLog, neutralise

IMAGE = "0123456789abcdef" * 4 + ".jpg"
WHEN = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def _entry(**changes: object) -> FeedbackEntry:
    fields = {
        "image": IMAGE,
        "predicted_label": "espresso",
        "score": 0.91,
        "correct_label": "",
        "model_version": "0123456789ab",
    }
    fields.update(changes)
    return FeedbackEntry(**fields)  # type: ignore[arg-type]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ('=HYPERLINK("http://evil")', '\'=HYPERLINK("http://evil")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("tabby cat", "tabby cat"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_formula_cells_are_neutralised(cell: str, expected: str) -> None:
    assert neutralise(cell) == expected


def test_first_row_brings_the_header_and_cells_are_quoted(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path / "nested" / "feedback.csv")
    tricky = 'Granny Smith, "the apple"'
    log.append(_entry(correct_label=tricky), WHEN)
    log.append(_entry(correct_label="=cmd|' /C calc'!A0", predicted_label="-1"), WHEN)
    text = (tmp_path / "nested" / "feedback.csv").read_bytes().decode("utf-8")
    assert text.startswith(",".join(HEADER) + "\r\n")
    assert '"Granny Smith, ""the apple"""' in text  # the csv module's quoting
    rows = _rows(tmp_path / "nested" / "feedback.csv")
    assert rows[0] == list(HEADER)
    assert rows[1] == ["2026-01-02T03:04:05.678+00:00", IMAGE, "espresso", "0.91", tricky, "0123456789ab"]
    assert rows[2][2] == "'-1"
    assert rows[2][4] == "'=cmd|' /C calc'!A0"
    assert len(rows) == 3


def test_a_cell_with_a_newline_stays_in_its_row(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path / "feedback.csv")
    log.append(_entry(correct_label="two\nlines"), WHEN)
    rows = _rows(tmp_path / "feedback.csv")
    assert len(rows) == 2 and rows[1][4] == "two\nlines"


ROWS_PER_WRITER = 25
THREADS_PER_PROCESS = 4


def _write_many(path: str, process_no: int) -> None:
    """Four threads in this process, each appending ROWS_PER_WRITER rows through its own FeedbackLog."""

    def writer(thread_no: int) -> None:
        log = FeedbackLog(Path(path))
        for i in range(ROWS_PER_WRITER):
            label = f'p{process_no}-t{thread_no}-{i}, with "quotes", commas ' + "x" * 300
            log.append(_entry(correct_label=label[:200], predicted_label=f"=p{process_no}"))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS_PER_PROCESS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_eight_writers_in_two_processes_write_whole_rows(tmp_path: Path) -> None:
    path = tmp_path / "feedback.csv"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_many, args=(str(path), n)) for n in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
        assert p.exitcode == 0
    rows = _rows(path)
    assert rows[0] == list(HEADER)
    body = rows[1:]
    assert len(body) == 2 * THREADS_PER_PROCESS * ROWS_PER_WRITER
    assert all(len(row) == len(HEADER) for row in body)
    assert all(row[2] in ("'=p0", "'=p1") and len(row[4]) == 200 for row in body)
    # Every writer's rows are all there, each exactly once.
    tags = {row[4].split(",")[0] for row in body}
    assert len(tags) == len(body)


def test_parse_accepts_a_form_report() -> None:
    entry = FeedbackEntry.parse(
        {"image": IMAGE, "prediction": "espresso", "score": "0.5", "correct_label": "  cappuccino "}
    )
    assert entry == _entry(score=0.5, correct_label="cappuccino", model_version="")


def test_parse_falls_back_to_the_announced_model_version() -> None:
    entry = FeedbackEntry.parse(
        {"image": IMAGE, "prediction": "espresso", "score": 1}, default_model_version="feedfacecafe"
    )
    assert entry.model_version == "feedfacecafe"


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({"prediction": "espresso", "score": 0.5}, "'image' is missing"),
        ({"image": IMAGE, "score": 0.5}, "'prediction' is missing"),
        ({"image": IMAGE, "prediction": "espresso"}, "'score'"),
        ({"image": IMAGE, "prediction": "espresso", "score": "high"}, "'score'"),
        ({"image": IMAGE, "prediction": "espresso", "score": 1.5}, "'score'"),
        ({"image": IMAGE, "prediction": "espresso", "score": "nan"}, "'score'"),
        (
            {"image": IMAGE, "prediction": "espresso", "score": 0.5, "correct_label": "x" * 201},
            "longer than 200",
        ),
        ({"image": IMAGE, "prediction": "espresso", "score": 0.5, "correct_label": "a\x07b"}, "control"),
        ({"image": IMAGE, "prediction": "esp\nresso", "score": 0.5}, "control"),
        ({"image": IMAGE, "prediction": ["espresso"], "score": 0.5}, "must be text"),
        (
            {"image": IMAGE, "prediction": "espresso", "score": 0.5, "model_version": "1 OR 1"},
            "model_version",
        ),
    ],
)
def test_parse_refuses_bad_reports_saying_why(data: dict, complaint: str) -> None:
    with pytest.raises(BadRequest) as caught:
        FeedbackEntry.parse(data)
    assert complaint in caught.value.message
