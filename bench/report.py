"""Turning raw benchmark runs into medians, targets (issues 7 and 13), a table and a plot.

Raw results are ``{kind: {"ssh": bool, "link_rtt_ms": float, "runs": {metric: [per repeat]}}}``
with ``runs["rt"]`` a list of per-repeat lists of round-trip seconds and ``runs["cpu:<role>"]``
the CPU seconds a process role spent on the stream. "local" is the reference every target is
computed from; a baseline (an earlier run's raw results, "before") adds the "no slower than
before" targets and its numbers beside the new ones.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

Raw = Dict[str, dict]
Summary = Dict[str, Dict[str, float]]


@dataclass(frozen=True)
class Ref:
    """What a target is computed from: the local reference's medians, the link's RTT (s) and
    the same kind's summary in the baseline run, if one was given (else empty)."""

    local: Dict[str, float]
    rtt: float
    before: Dict[str, float]


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    scale: float  # stored value * scale = shown value
    digits: int
    #: (comparison, bound in stored units); a KeyError (no local or no baseline) means no target.
    target: Optional[Callable[[Ref], Tuple[str, float]]] = None
    target_text: str = ""
    #: How repeats combine: the median, or the sum (counts of failures: one is one too many).
    total: bool = False


ROWS: Sequence[Row] = (
    Row("start", "cold start", "s", 1, 2, lambda r: ("<=", r.local["start"] + 0.6), "local + 0.6 s"),
    Row("start_over", "cold start - local", "s", 1, 2,
        lambda r: ("<=", r.before["start_over"]), "no slower than before"),
    Row("warm_start", "start with a connection up", "s", 1, 2),
    Row("restart", "restart", "s", 1, 2, lambda r: ("<=", r.local["restart"] + 2 * r.rtt), "local + 2 RTT"),
    Row("restart_over", "restart - local", "s", 1, 2,
        lambda r: ("<=", r.before["restart_over"]), "no slower than before"),
    Row("rt_p50", "execute round trip p50", "ms", 1000, 1,
        lambda r: ("<=", r.rtt + r.local["rt_p50"] + 0.0005), "local + link RTT + 0.5 ms"),
    Row("rt_p99", "execute round trip p99", "ms", 1000, 1,
        lambda r: ("<=", r.rtt + r.local["rt_p99"] + 0.0005), "local + link RTT + 0.5 ms"),
    Row("stream", "20 MB stream throughput", "MB/s", 1, 1, lambda r: (">=", 0.90 * r.local["stream"]),
        ">= 90% of local"),
    Row("stream_share", "20 MB stream, share of local", "%", 100, 0),
    Row("interrupt", "interrupt", "ms", 1000, 1, lambda r: ("<=", 2 * r.rtt + 0.020), "2 RTT + 20 ms"),
    Row("shutdown", "shutdown", "s", 1, 2),
    Row("rss", "proxy RSS (local: the kernel)", "MB", 1, 1, lambda r: ("<=", 25.0), "25 MB"),
    Row("rss_tree", "proxy + its ssh processes RSS", "MB", 1, 1),
    Row("many", "N kernels at once, all ready", "s", 1, 2, lambda r: ("<=", 1.3 * r.local["many"]),
        "1.3 x local"),
    Row("many_failed", "of those, failed to start (all repeats)", "", 1, 0, lambda r: ("<=", 0.0), "0",
        total=True),
    Row("connections", "SSH connections for N kernels", "", 1, 0, lambda r: ("<=", 1.0), "1"),
    Row("link_rtt", "link RTT through the SSH connection", "ms", 1000, 2),
)
#: Rows computed from other rows of the same run: row -> the row it is the local kernel's
#: difference (or, for the share, ratio) to, repeat by repeat.
DERIVED = {"start_over": "start", "restart_over": "restart", "stream_share": "stream"}
ROW = {row.key: row for row in ROWS}


def percentile(values: Sequence[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def per_repeat(runs: Dict[str, list], key: str) -> List[float]:
    """One value per repeat for a row (round-trip percentiles are taken within each repeat)."""
    if key in ("rt_p50", "rt_p99"):
        q = 0.5 if key == "rt_p50" else 0.99
        return [percentile(trips, q) for trips in runs.get("rt", []) if trips]
    return list(runs.get(key, []))


def summarize(raw: Raw) -> Summary:
    """Medians over repeats; the round-trip percentiles over all round trips of all repeats."""
    out: Summary = {}
    for kind, data in raw.items():
        runs, summary = data["runs"], {}
        pooled = [t for trips in runs.get("rt", []) for t in trips]
        if pooled:
            summary["rt_p50"], summary["rt_p99"] = percentile(pooled, 0.5), percentile(pooled, 0.99)
        for row in ROWS:
            values = per_repeat(runs, row.key)
            if row.key not in summary and values:
                summary[row.key] = sum(values) if row.total else statistics.median(values)
        for role in {k for k in runs if k.startswith("cpu:")}:
            summary[role] = statistics.median(runs[role])
        out[kind] = summary
    local = out.get("local", {})
    for kind, summary in out.items():
        for key, source in DERIVED.items():
            if raw[kind]["ssh"] and source in summary and local.get(source):
                summary[key] = _paired(key, raw[kind]["runs"].get(source, []), raw["local"]["runs"].get(source, []),
                                       summary[source], local[source])
    return out


def _paired(key: str, values: List[float], local: List[float], median: float, local_median: float) -> float:
    """A derived row: the median of the per-repeat ratios (stream share) or differences to the
    local kernel measured in the same repeat, which a burst of load hits alike; from the medians
    where the repeats do not pair up (a run cut short)."""
    combine = (lambda a, b: a / b) if key == "stream_share" else (lambda a, b: a - b)
    if len(values) == len(local) and all(local):
        return statistics.median(combine(a, b) for a, b in zip(values, local))
    return combine(median, local_median)


def link_rtt(raw: Raw, kind: str, summary: Optional[Summary] = None) -> float:
    """The link's round-trip time in seconds: measured through the SSH connection where the run
    has it (the delaying relay costs a little more than its nominal delay), else the nominal
    TCP connect time plus the added delay."""
    summary = summary or summarize(raw)
    measured = summary.get(kind, {}).get("link_rtt")
    return measured if measured else raw[kind]["link_rtt_ms"] / 1000


def check(raw: Raw, summary: Summary, kind: str, key: str,
          before: Optional[Summary] = None) -> Optional[Tuple[str, float, bool]]:
    """(comparison, bound, passed) for an SSH kind's row, or None where the row has no target
    (or what it is computed from was not measured: the local reference, the baseline)."""
    row = ROW[key]
    if not raw[kind]["ssh"] or row.target is None or key not in summary[kind]:
        return None
    before = before or {}
    ref = Ref(summary.get("local", {}), link_rtt(raw, kind, summary), before.get(kind, {}))
    try:
        op, bound = row.target(ref)
    except KeyError:
        return None
    value = summary[kind][key]
    return op, bound, value <= bound if op == "<=" else value >= bound


def _fmt(row: Row, value: Optional[float]) -> str:
    return "-" if value is None else f"{value * row.scale:.{row.digits}f}"


def table(raw: Raw, *, markdown: bool = False, many: int = 20, baseline: Optional[Raw] = None) -> str:
    """One line per measured row: the local reference, then per SSH kind value, target, pass/fail;
    with a baseline run, each kind's value in it ("before") beside the new one."""
    summary = summarize(raw)
    before = summarize(baseline) if baseline else {}
    kinds = list(raw)
    header = ["metric"]
    for kind in kinds:
        header += [kind] + ([f"{kind} before"] if kind in before else []) + (["target", "ok"] if raw[kind]["ssh"] else [])
    lines = []
    for row in ROWS:
        if not any(row.key in summary[k] for k in kinds):
            continue
        unit = f" ({row.unit})" if row.unit else ""
        cells = [row.label.replace("N ", f"{many} ") + unit]
        for kind in kinds:
            cells.append(_fmt(row, summary[kind].get(row.key)))
            if kind in before:
                cells.append(_fmt(row, before[kind].get(row.key)))
            if raw[kind]["ssh"]:
                verdict = check(raw, summary, kind, row.key, before)
                if verdict is None:
                    cells += ["", ""]
                else:
                    op, bound, ok = verdict
                    cells += [f"{op} {_fmt(row, bound)}", "pass" if ok else "FAIL"]
        lines.append(cells)
    return _render(header, lines, markdown)


#: The order of the CPU table's rows (measure.cpu_roles names them).
CPU_ROLES = ("client", "kernel", "proxy", "proxy child", "ssh client", "ssh master", "delay relay", "sshd",
             "agent", "keeper", "warm pool", "remote kernel", "remote other")


def cpu_table(raw: Raw, *, markdown: bool = False, baseline: Optional[Raw] = None) -> str:
    """CPU seconds each process role spent on the stream (medians over repeats), per kind; "client"
    is this process (jupyter_client receiving the stream). Empty without the stream."""
    summary = summarize(raw)
    before = summarize(baseline) if baseline else {}
    kinds = [k for k in raw if any(key.startswith("cpu:") for key in summary[k])]
    if not kinds:
        return ""
    header = ["CPU s in the stream"]
    for kind in kinds:
        header += [kind] + ([f"{kind} before"] if kind in before else [])
    lines = []
    for role in (*CPU_ROLES, "total"):
        key = f"cpu:{role}"
        cells = [role]
        for kind in kinds:
            for s in [summary[kind]] + ([before[kind]] if kind in before else []):
                value = (sum(v for k, v in s.items() if k.startswith("cpu:")) if role == "total" and
                         any(k.startswith("cpu:") for k in s) else s.get(key))
                cells.append("-" if value is None else f"{value:.3f}")
        if any(c != "-" for c in cells[1:]):
            lines.append(cells)
    return _render(header, lines, markdown)


def _render(header: List[str], lines: List[List[str]], markdown: bool) -> str:
    if markdown:
        align = ["---"] + ["---:" if h not in ("ok", "target") else ":---" for h in header[1:]]
        out = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    fmt = [f"{{:<{widths[0]}}}"] + [f"{{:>{w}}}" for w in widths[1:]]
    return "\n".join("  ".join(f.format(c) for f, c in zip(fmt, r)) for r in [header, *lines])


def targets_text(raw: Raw) -> str:
    """How each target was computed, with the link RTT it used."""
    rtts = ", ".join(f"{k}: {1000 * link_rtt(raw, k):.2f} ms (nominal {d['link_rtt_ms']:.2f})"
                     for k, d in raw.items() if d["ssh"])
    return ("targets from the local reference medians; link RTT (median round trip of a request "
            "through the SSH connection; nominal: TCP connect to sshd plus the added delay) "
            f"{rtts}; " + "; ".join(f"{r.key}: {r.target_text}" for r in ROWS if r.target_text))


def plot(raw: Raw, path: str, title: str, many: int = 20) -> None:
    """One small bar chart per row: median per kind, min-max over repeats, targets as red/green ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(raw)
    rows = [row for row in ROWS if any(row.key in s for s in summary.values())]
    cols = 4
    fig, axes = plt.subplots((len(rows) + cols - 1) // cols, cols, figsize=(4 * cols, 3 * ((len(rows) + 3) // cols)),
                             squeeze=False)
    kinds = list(raw)
    colors = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]
    for ax, row in zip(axes.flat, rows):
        for i, kind in enumerate(kinds):
            value = summary[kind].get(row.key)
            if value is None:
                continue
            values = [value] if row.total else per_repeat(raw[kind]["runs"], row.key) or [value]
            low, high = min(values) * row.scale, max(values) * row.scale
            shown = value * row.scale
            ax.bar(i, shown, color=colors[i % len(colors)],
                   yerr=[[max(0.0, shown - low)], [max(0.0, high - shown)]], capsize=3)
            verdict = check(raw, summary, kind, row.key)
            if verdict:
                _, bound, ok = verdict
                ax.hlines(bound * row.scale, i - 0.45, i + 0.45, colors="green" if ok else "red",
                          linestyles="--", linewidth=2)
        ax.set_title(row.label.replace("N ", f"{many} ") + (f" ({row.unit})" if row.unit else ""), fontsize=9)
        ax.set_xticks(range(len(kinds)))
        ax.set_xticklabels(kinds, fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle(title + "\nbars: median, whiskers: min-max over repeats; dashed: target (green met, red missed)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
