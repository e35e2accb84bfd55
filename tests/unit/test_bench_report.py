"""The generated "latest" table of docs/benchmark.md (bench/report.py): a run replaces the rows
of the modes it measured, keeps the others, never appends, and leaves the rest of the page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import report

MACHINE = {"cpus": 2, "cpu_model": "Test CPU", "platform": "Linux"}


def compare_out(product_eps: float, date: str = "2026-12-01 10:00") -> dict[str, Any]:
    medians = {
        "product": {
            "events_per_s": product_eps,
            "api_calls_per_event": 0.5,
            "latency_p50_ms": 2200.0,
            "latency_p99_ms": 3600.0,
            "worker_cpu_ms_per_event": 2.7,
            "peak_rss_mb": 231.0,
        },
        "naive": {
            "events_per_s": 32.9,
            "api_calls_per_event": 2.545,
            "latency_p50_ms": 29900.0,
            "latency_p99_ms": 59100.0,
            "worker_cpu_ms_per_event": 5.4,
            "peak_rss_mb": 148.0,
        },
    }
    return {
        "machine": MACHINE,
        "finished_at": date,
        "quick": False,
        "compare": {
            "config": {
                "events": 2000,
                "rounds": 3,
                "latency_ms": 20.0,
                "product_processes": 2,
                "product_concurrency": 100,
            },
            "runs": [{"steal_cores": 0.0}],
            "summary": {
                "medians": medians,
                "ratios": {"events_per_s_product_over_naive": round(product_eps / 32.9, 2)},
            },
        },
    }


def memory_out() -> dict[str, Any]:
    return {
        "machine": MACHINE,
        "finished_at": "2026-12-01 11:00",
        "quick": False,
        "memory_test": {
            "config": {"events": 200_000, "first_checkpoint": 20_000},
            "events_per_s_overall": 300.0,
            "api_calls_per_event": 0.45,
            "rss_after_first_mb": 133.2,
            "rss_after_total_mb": 134.7,
            "growth": 0.011,
        },
    }


PAGE = f"""# Benchmark

Intro.

{report.START}
| hand-written | table |
| --- | --- |
| 1 | 2 |
{report.END}

## Method

Text after.
"""


def table_rows(text: str) -> list[str]:
    block = text[text.index(report.START) : text.index(report.END)]
    return [line for line in block.splitlines() if line.startswith("| ")]


def test_a_run_replaces_the_block_and_keeps_the_page() -> None:
    text = report.replace_latest(PAGE, compare_out(500.8))
    assert text.startswith("# Benchmark\n\nIntro.\n\n")
    assert text.endswith("\n\n## Method\n\nText after.\n")
    assert "hand-written" not in text
    rows = table_rows(text)
    assert rows[0].startswith("| mode | date (UTC) | machine | events/s product")
    assert len(rows) == 3  # header, separator, compare
    assert rows[2].startswith("| compare (2,000 events x 3 rounds")
    for figure in ("500.8", "32.9", "15.2x", "0.500 / 2.545", "2200 / 3600", "2.70 / 5.40"):
        assert figure in rows[2]
    assert "2 CPUs, Test CPU" in rows[2]


def test_a_second_run_replaces_its_row_and_keeps_other_modes() -> None:
    text = report.replace_latest(PAGE, compare_out(500.8))
    text = report.replace_latest(text, memory_out())
    text = report.replace_latest(text, compare_out(480.0, date="2026-12-02 09:00"))
    rows = table_rows(text)
    assert len(rows) == 4  # header, separator, compare, memory: nothing appended
    assert "480.0" in rows[2] and "2026-12-02 09:00" in rows[2] and "500.8" not in text
    assert rows[3].startswith("| memory (200,000 distinct events")
    assert "133.2 after 20,000 -> 134.7 after 200,000 (+1.1%)" in rows[3]
    assert text.count(report.START) == 1 and text.count(report.END) == 1


def test_missing_markers_are_an_error(tmp_path: Path) -> None:
    page = tmp_path / "benchmark.md"
    page.write_text("# Benchmark\n\nno block\n")
    with pytest.raises(report.MarkersMissing):
        report.write_latest(compare_out(500.8), page)
    assert page.read_text() == "# Benchmark\n\nno block\n"


def test_the_real_page_has_one_block() -> None:
    text = report.DOCS.read_text()
    assert text.count(report.START) == 1 and text.count(report.END) == 1
    assert text.index(report.START) < text.index(report.END)


def floor_out() -> dict[str, Any]:
    runs = [
        {"step": step, "messages": 20_000, "cpu_ms_per_message": ms}
        for step, ms in (("celery", 0.57), ("publish", 1.43), ("dedupe", 1.94))
    ]
    return {
        "machine": MACHINE,
        "finished_at": "2026-12-01 12:00",
        "quick": False,
        "floor": {"runs": runs, "medians_ms": {r["step"]: r["cpu_ms_per_message"] for r in runs}},
    }


def test_the_floor_row_sits_under_the_comparison_with_its_three_steps() -> None:
    text = report.replace_latest(PAGE, memory_out())
    text = report.replace_latest(text, floor_out())
    text = report.replace_latest(text, compare_out(500.8))
    rows = table_rows(text)
    assert [row.split(" ", 2)[1] for row in rows[2:]] == ["compare", "floor", "memory"]
    assert rows[3].startswith("| floor (20,000 messages x 1 rounds per step")
    assert "0.57 / 1.43 / 1.94 (floor steps)" in rows[3]


def test_the_comparison_reports_each_ratio_from_the_medians() -> None:
    import argparse

    from bench.compare import summarize_throughput

    def run(kind: str, eps: float, calls: float, cpu: float) -> dict[str, Any]:
        return {
            "worker": kind,
            "events_per_s": eps,
            "api_calls_per_event": calls,
            "latency_p50_ms": 1.0,
            "latency_p99_ms": 2.0,
            "peak_rss_mb": 100.0,
            "rate_limited_429": 0,
            "worker_cpu_ms_per_event": cpu,
            "worker_cpu_util": 1.0,
            "pipeline_cpu_ms_per_event": cpu * 2,
            "end_to_end_events_per_s": eps,
        }

    runs = [
        run("product", 800.0, 0.14, 1.6),
        run("naive", 32.0, 2.5, 4.8),
        run("product", 600.0, 0.14, 2.0),
        run("naive", 30.0, 2.5, 6.0),
        run("product", 700.0, 0.14, 1.8),
        run("naive", 31.0, 2.5, 5.4),
    ]
    args = argparse.Namespace(latency_ms=20.0, processes=2, concurrency=100)
    ratios = summarize_throughput(runs, args)["ratios"]
    assert ratios == {
        "events_per_s_product_over_naive": round(700.0 / 31.0, 2),
        "calls_per_event_naive_over_product": round(2.5 / 0.14, 2),
        "cpu_per_event_naive_over_product": 3.0,
    }
