"""What a run prints, and the generated "latest" table in docs/benchmark.md."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from devkit import ROOT

RUN_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("run", lambda r: f"{r['worker']}-{r['round']}"),
    ("records", lambda r: f"{r['records']}/{r['events']}"),
    ("window s", lambda r: f"{r['window_s']:.1f}"),
    ("ev/s", lambda r: f"{r['events_per_s']:.1f}"),
    ("calls/ev", lambda r: f"{r['api_calls_per_event']:.3f}"),
    ("p50 ms", lambda r: f"{r['latency_p50_ms']:.0f}"),
    ("p99 ms", lambda r: f"{r['latency_p99_ms']:.0f}"),
    ("peak RSS MB", lambda r: f"{r['peak_rss_mb']:.1f}"),
    ("429s", lambda r: str(r["rate_limited_429"])),
    ("CPU ms/ev", lambda r: f"{r['worker_cpu_ms_per_event']:.2f}"),
    ("wkr CPU", lambda r: f"{r['worker_cpu_util']:.0%}"),
    ("sim CPU", lambda r: f"{r['simulator_cpu_util']:.0%}"),
    ("rabbit CPU", lambda r: f"{r['rabbitmq_cpu_util']:.0%}"),
    ("redis CPU", lambda r: f"{r['redis_cpu_util']:.0%}"),
    ("bench CPU", lambda r: f"{r['bench_cpu_util']:.0%}"),
    ("rest CPU", lambda r: f"{r['rest_cpu_util']:.0%}"),
    ("idle", lambda r: f"{r['idle_cores']:.0%}"),
    ("steal", lambda r: f"{r.get('steal_cores', 0.0):.0%}"),
    ("correct", lambda r: f"{r['correct_records']}/{r['records']}"),
    ("dups", lambda r: str(r["duplicates"])),
)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        ),
        "  ".join("-" * w for w in widths),
    ]
    for row in rows:
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def print_throughput(
    runs: list[dict[str, Any]], summary: dict[str, Any], *, paced: bool = False
) -> None:
    headers = [c[0] for c in RUN_COLUMNS]
    print()
    print("Per run (window = first record to last record):")
    print(table(headers, [[fmt(r) for _, fmt in RUN_COLUMNS] for r in runs]))
    print()
    print("Medians per worker:")
    rows = []
    for kind, m in summary["medians"].items():
        rows.append(
            [
                kind,
                f"{m['events_per_s']:.1f}",
                f"{m['api_calls_per_event']:.3f}",
                f"{m['latency_p50_ms']:.0f}",
                f"{m['latency_p99_ms']:.0f}",
                f"{m['peak_rss_mb']:.1f}",
                f"{m['rate_limited_429']:.0f}",
                f"{m['worker_cpu_ms_per_event']:.2f}",
                f"{m['worker_cpu_util']:.0%}",
            ]
        )
    print(
        table(
            [
                "worker",
                "ev/s",
                "calls/ev",
                "p50 ms",
                "p99 ms",
                "peak RSS MB",
                "429s",
                "CPU ms/ev",
                "wkr CPU",
            ],
            rows,
        )
    )
    if "ratios" in summary:
        r = summary["ratios"]
        print()
        print(f"Ratio events/s product/naive:      {r['events_per_s_product_over_naive']:.2f}x")
        print(f"Ratio calls/event naive/product:   {r['calls_per_event_naive_over_product']:.2f}x")
        cpu = r.get("cpu_per_event_naive_over_product")
        if cpu is not None:
            print(f"Ratio CPU/event naive/product:     {cpu:.2f}x")
    print()
    if paced:
        print(
            "(Sends were paced: events/s is the send rate, so the capacity model does not apply.)"
        )
        return
    print(
        "Capacity model (one pod, no budget): min(worker CPU-bound, machine CPU-bound, "
        "concurrency / (calls x latency)); worker CPU-bound = min(procs, cores) / worker CPU per "
        "event, machine CPU-bound = cores / pipeline CPU per event (worker + simulator + RabbitMQ "
        "+ Redis + benchmark: they share the cores), conc = procs x concurrency each; "
        "measured = first to last record, end-to-end = N / (first send to last record), the "
        "interval of the CPU figures:"
    )
    rows = []
    for kind, m in summary["capacity_model"].items():
        rows.append(
            [
                kind,
                str(m["processes"]),
                str(m["concurrency"]),
                f"{m['cpu_bound_events_per_s']:.1f}",
                f"{m['pipeline_cpu_ms_per_event']:.2f}",
                f"{m['machine_bound_events_per_s']:.1f}",
                f"{m['api_wait_per_event_ms']:.1f}",
                f"{m['concurrency_bound_events_per_s']:.1f}",
                f"{m['predicted_events_per_s']:.1f}",
                f"{m['measured_events_per_s']:.1f}",
                f"{m['measured_end_to_end_events_per_s']:.1f}",
                f"{m['implied_in_flight_ms_per_event']:.0f}",
                m["limited_by"],
            ]
        )
    print(
        table(
            [
                "worker",
                "procs",
                "conc",
                "CPU-bound ev/s",
                "pipeline CPU ms/ev",
                "machine-bound ev/s",
                "API wait ms/ev",
                "conc-bound ev/s",
                "predicted",
                "measured",
                "end-to-end",
                "conc/measured ms",
                "limit",
            ],
            rows,
        )
    )


# --------------------------------------------------------------------------------------------
# The generated "latest" table of docs/benchmark.md

DOCS = ROOT / "docs" / "benchmark.md"
START = "<!-- bench:latest:start -->"
END = "<!-- bench:latest:end -->"
LATEST_HEADER = (
    "mode",
    "date (UTC)",
    "machine",
    "events/s product",
    "events/s naive",
    "ratio",
    "calls/event product / naive",
    "p50 / p99 ms",
    "CPU ms/event product / naive",
    "RSS MB",
)
# Row order in the table; a row's first cell starts with its label.
LABELS = {
    "compare": "compare",
    "floor": "floor",
    "rate_limit_test": "fleet",
    "memory_test": "memory",
}


NONE = "n/a"  # a figure the mode does not measure


class MarkersMissing(ValueError):
    """The document has no ``START`` ... ``END`` block to replace."""


def _n(value: Any, spec: str = ".1f") -> str:
    return NONE if value is None else format(value, spec)


def latest_rows(out: dict[str, Any]) -> dict[str, list[str]]:
    """One row per mode that ``out`` (what ``python -m bench --json`` writes) holds."""
    machine = out.get("machine", {})
    where = f"{machine.get('cpus', '?')} CPUs, {machine.get('cpu_model', 'unknown')}"
    date = str(out.get("finished_at", "?"))
    quick = ", quick" if out.get("quick") else ""
    rows: dict[str, list[str]] = {}
    compare = out.get("compare")
    if compare:
        config = compare["config"]
        medians = compare["summary"]["medians"]
        product, naive = medians.get("product", {}), medians.get("naive", {})
        ratio = compare["summary"].get("ratios", {}).get("events_per_s_product_over_naive")
        steal = [r.get("steal_cores", 0.0) for r in compare["runs"]]
        rows["compare"] = [
            f"compare ({config['events']:,} events x {config['rounds']} rounds, "
            f"{config['latency_ms']:g} ms API latency, product {config['product_processes']} "
            f"x {config['product_concurrency']}{quick})",
            date,
            f"{where}, steal {max(steal, default=0.0):.0%}",
            _n(product.get("events_per_s")),
            _n(naive.get("events_per_s")),
            NONE if ratio is None else f"{ratio:.1f}x",
            f"{_n(product.get('api_calls_per_event'), '.3f')} / "
            f"{_n(naive.get('api_calls_per_event'), '.3f')}",
            f"{_n(product.get('latency_p50_ms'), '.0f')} / "
            f"{_n(product.get('latency_p99_ms'), '.0f')} (product)",
            f"{_n(product.get('worker_cpu_ms_per_event'), '.2f')} / "
            f"{_n(naive.get('worker_cpu_ms_per_event'), '.2f')}",
            f"{_n(product.get('peak_rss_mb'))} / {_n(naive.get('peak_rss_mb'))} (peak)",
        ]
    floor = out.get("floor")
    if floor:
        medians = floor["medians_ms"]
        rounds = len(floor["runs"]) // max(1, len(medians))
        messages = floor["runs"][0]["messages"] if floor["runs"] else 0
        rows["floor"] = [
            f"floor ({messages:,} messages x {rounds} rounds per step, one process x 100: "
            f"Celery alone / + one confirmed publish / + the dedupe round trips{quick})",
            date,
            where,
            NONE,
            NONE,
            NONE,
            NONE,
            NONE,
            " / ".join(f"{medians[step]:.2f}" for step in ("celery", "publish", "dedupe"))
            + " (floor steps)",
            NONE,
        ]
    fleet = out.get("rate_limit_test")
    if fleet:
        config = fleet["config"]
        rows["rate_limit_test"] = [
            f"fleet ({config['workers']} workers on one {config['budget']} budget, "
            f"{fleet['budget_utilisation']:.1%} of it used, "
            f"{fleet['rate_limited_429_in_window']} x 429{quick})",
            date,
            where,
            _n(fleet["events_per_s"], ".2f"),
            NONE,
            NONE,
            _n(fleet["api_calls_per_event"], ".3f"),
            NONE,
            NONE,
            f"{_n(fleet['fleet_peak_rss_mb'])} (fleet peak)",
        ]
    memory = out.get("memory_test")
    if memory:
        config = memory["config"]
        rows["memory_test"] = [
            f"memory ({config['events']:,} distinct events, one process{quick})",
            date,
            where,
            _n(memory["events_per_s_overall"]),
            NONE,
            NONE,
            _n(memory["api_calls_per_event"], ".3f"),
            NONE,
            NONE,
            f"{memory['rss_after_first_mb']:.1f} after {config['first_checkpoint']:,} -> "
            f"{memory['rss_after_total_mb']:.1f} after {config['events']:,} "
            f"({memory['growth']:+.1%})",
        ]
    return rows


def _md_row(cells: list[str] | tuple[str, ...]) -> str:
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def _generated_rows(block: str) -> dict[str, list[str]]:
    """The rows an earlier run generated, by mode (other content of the block is dropped)."""
    by_label = {label: mode for mode, label in LABELS.items()}
    rows: dict[str, list[str]] = {}
    for line in block.splitlines():
        if not line.startswith("| "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        mode = by_label.get(cells[0].split(" ", 1)[0])
        if mode is not None and len(cells) == len(LATEST_HEADER):
            rows[mode] = cells
    return rows


def render_latest(rows: dict[str, list[str]]) -> str:
    lines = [
        START,
        "<!-- Generated by `python -m bench --write-docs`: a run replaces the rows of the modes "
        "it ran. Do not edit by hand. -->",
        "",
        _md_row(LATEST_HEADER),
        _md_row(["---"] * len(LATEST_HEADER)),
        *(_md_row(rows[mode]) for mode in LABELS if mode in rows),
        "",
        END,
    ]
    return "\n".join(lines)


def replace_latest(text: str, out: dict[str, Any]) -> str:
    """``text`` with its latest block regenerated from ``out``: the modes of this run replace
    their rows, the other modes' generated rows stay, nothing is appended."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise MarkersMissing(f"no {START} ... {END} block")
    rows = _generated_rows(text[start:end])
    rows.update(latest_rows(out))
    return text[:start] + render_latest(rows) + text[end + len(END) :]


def write_latest(out: dict[str, Any], path: Path = DOCS) -> None:
    path.write_text(replace_latest(path.read_text(), out))
