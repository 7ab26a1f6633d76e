"""How a results notebook shows a record: Markdown summaries and tables (HTML and plain text)."""
from __future__ import annotations

import html

from ..judge import facts, ladder
from ..judge.shown import table_facts
from ..lab.words import STATUS_WORDS, cost_text, count, duration, overflow_text, overlap_text, profile_name
from .figures import metric_of, row_seconds, status_counts, time_and_money, wall_time


def rich(html_text: str, plain: str) -> dict:
    """A display bundle with HTML for notebooks and plain text for everything else."""
    return {"text/html": html_text, "text/plain": plain}


def diff_display(diff: str) -> dict:
    """A unified diff highlighted as the dashboard shows it (inline styles survive GitHub,
    nbviewer and Colab), with the plain diff for everything else."""
    from ..ui.diffview import diff_html

    return rich(diff_html(diff or "", max_height="none"), diff or "no changes")


def table_display(headers: list[str], cells: list[list[str]]) -> dict:
    """A plain table as HTML and as aligned text."""
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>"
                                     for c in row) + "</tr>" for row in cells)
    widths = [max([len(h)] + [len(str(row[i])) for row in cells]) for i, h in enumerate(headers)]
    text = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    text += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in cells]
    return rich(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
                "\n".join(text))


def number(value, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def experiments_table(record: dict) -> dict:
    """Every run: index, status, role, metric ± what one run is worth, Δ against the best before it in
    its segment (judge/shown.py), description."""
    metric, _ = metric_of(record)
    rows = record.get("rows") or []
    cells = []
    for position, (row, seen) in enumerate(zip(rows, table_facts(rows, metric))):
        usage, seconds = row.get("usage") or {}, row_seconds(row)
        cells.append([row.get("index", position), row.get("status", ""), row.get("role") or "",
                      number(seen.value), number(seen.half_width, 4),
                      "" if seen.delta is None else f"{seen.delta:+.6f}", row.get("worker") or "",
                      row.get("memory_gb", "") or "", row.get("kind") or "",
                      "" if seconds is None else f"{float(seconds):.0f}",
                      f"{float(usage['cost_usd']):.4f}" if usage.get("cost_usd") else "",
                      row.get("description", "")])
    return table_display(["#", "status", "role", metric, "± (95%, one run)", "Δ vs best", "worker", "memory_gb",
                          "kind", "seconds", "cost $", "description"], cells)


def kept_table(changes: list[dict]) -> dict:
    """Kept changes: the gain of the means with its 95% interval, and the runs behind each side."""
    def holds(change):
        return {True: "yes", False: "no: within the noise now", None: ""}[change.get("holds")]

    return table_display(["#", "gain", "± (95%)", "gain %", "before (runs)", "after (runs)", "clear of noise",
                          "holdout", "description"],
                         [[c["index"], number(c["gain"]), number(c.get("half_width")),
                           "" if c["gain_pct"] is None else f"{c['gain_pct']:.2f}",
                           f"{number(c['before'])} ({c.get('before_runs') or '-'})",
                           f"{number(c['value'])} ({c.get('value_runs') or '-'})", holds(c),
                           number(c.get("holdout")), c["description"]]
                          for c in changes])


def ablation_display(record: dict) -> dict:
    """The ablation table (facts.ablation_table): each kept change's contribution to the best now."""
    metric, direction = metric_of(record)
    table = facts.ablation_table(record.get("rows") or [], metric, direction)
    return table_display(["#", "change", "best without it", "contribution", "± (95%)", "verdict"],
                         [[t["index"], t["description"], number((t["without"] or {}).get("mean")),
                           number(t["contribution"]), number(t["half_width"]), t["verdict"]] for t in table])


def transfer_display(record: dict) -> dict:
    """Each transfer ladder (judge/ladder.py): the night's gain at the larger scale, and each kept change
    there against what it was worth at the screen, with its label."""
    metric, direction = metric_of(record)
    rows = record.get("rows") or []
    cells = []
    for scale in ladder.scales(rows):
        found = ladder.table(rows, scale, metric, direction)
        if not found:
            continue
        said = ladder.scale_text(scale)
        cells.append([said, "the night (baseline → best)", number(found["screen_gain"]), number(found["gain"]),
                      number(found["half_width"]), ""])
        cells += [[said, f"#{c['index']} {c['description']}", number(c["screen"]), number(c["contribution"]),
                   number(c["half_width"]), c["label"]] for c in found["changes"]]
    return table_display(["scale", "change", "at the screen", "at scale", "± (95%)", "label"], cells)


def crash_table(groups: list[dict]) -> dict:
    return table_display(["status", "kind", "count", "experiments", "last reason"],
                         [[g["status"], g["kind"], g["count"],
                           ", ".join(str(i) for i in g["indexes"]), g["example"][:100]]
                          for g in groups])


def time_table(spent: dict, kept: int = 0) -> dict:
    """Seconds by phase and by outcome, with shares of the total, then tokens and dollars."""
    phases = [("agent proposing", spent["propose_s"]), ("training and evaluation", spent["run_s"]),
              ("judging", spent["judge_s"])]
    total = max(spent["total_s"], sum(seconds for _, seconds in phases)) or 1.0
    phases.append(("the harness (git, checks, records)",
                   max(0.0, total - sum(seconds for _, seconds in phases))))

    def share(seconds: float) -> str:
        return f"{100 * seconds / total:.0f}%"

    lines = [[f"phase: {name}", duration(seconds), share(seconds)] for name, seconds in phases]
    lines += [[f"outcome: {status}", duration(seconds), share(seconds)]
              for status, seconds in sorted(spent["by_status"].items(), key=lambda i: -i[1])]
    tokens = spent["tokens"]
    lines.append(["tokens in / out", f"{tokens['input_tokens']:,} / {tokens['output_tokens']:,}",
                  ""])
    lines.append(["cost", f"${spent['cost_usd']:.4f}",
                  f"${spent['cost_usd'] / kept:.4f} per kept change" if kept else ""])
    return table_display(["where", "spent", "share"], lines)


def summary_markdown(record: dict) -> str:
    """The results at a glance, as Markdown; every figure from facts.summary."""
    rows = record.get("rows") or []
    metric, direction = metric_of(record)
    run, config = record.get("run") or {}, record.get("config") or {}
    counts = status_counts(rows)
    found = facts.summary(rows, run, metric, direction)
    money = time_and_money(rows)
    agent = run.get("agent_label") or run.get("agent") or "unknown"
    model = run.get("model")
    budget = run.get("budget") or config.get("budget")
    budget = (f"{float(budget):g} s of training per experiment" if budget is not None
              else "unknown" if record.get("source") == "results.tsv"
              else "the hardware profile's training time per experiment")
    lines = [f"- **Lab**: `{record.get('lab', '')}`"
             + (f", branch `autoresearch/{run['tag']}`" if run.get("tag") else "")
             + f" (source: {record.get('source', 'lab')})",
             f"- **Hardware**: {run.get('device') or 'unknown'}; profile "
             f"`{profile_name(run.get('profile') or config.get('profile')) or 'unknown'}`"
             + (f"; sandbox: {run['sandbox']}" if run.get("sandbox") else ""),
             f"- **Agent**: {agent}" + (f", model `{model}`" if model else ""),
             f"- **Budget**: {budget}"
             + (f"; policy `{run['policy']}`" if run.get("policy") else "")
             + (f"; at most {run['max_experiments']} experiments"
                if run.get("max_experiments") else ""),
             f"- **Runs**: {len(rows)}, {count(found['changes'], 'change kept')}"
             + (" — " + ", ".join(f"{number} {STATUS_WORDS.get(status, status)}" for status, number in counts.items()
                                  if number) if rows else " (no run yet)")]
    best, base = found["best"], found["baseline"]
    if best is not None and base is not None and found["gain"] is None:
        lines.append(f"- **{metric}** ({direction} is better): baseline {base.text()}; no change kept, so no gain")
    elif best is not None and base is not None:
        spread = f" ± {found['gain_half_width']:.6f}" if found["gain_half_width"] is not None else ""
        lines.append(f"- **{metric}** ({direction} is better; each value the mean of its code's runs, "
                     f"± a 95% interval): baseline {base.text()} → best {best.text()} "
                     f"(#{found['best_row'].get('index')}), gain {found['gain']:+.6f}{spread}"
                     + (f" ({found['gain_pct']:.2f}%)" if found["gain_pct"] is not None else ""))
    else:
        lines.append(f"- **{metric}**: no successful run yet")
    busy = found.get("duty")
    if busy and busy["night"] is not None:
        each = busy["a_run"]
        overlapped = overlap_text(each["overlap_s"], unit="")
        lines.append(f"- **Duty cycle** (training time over wall time{'; on the cpu clock an estimate' if busy['estimate'] else ''}): {busy['per_run']:.0%} of a run (median), "
                     f"{busy['night']:.0%} of the night; a run's seconds: start-up {each['startup_s']:.1f}{overlapped}, training "
                     f"{each['training_s']:.1f}, export {each['export_s']:.1f}, evaluation {each['evaluate_s']:.1f}, "
                     f"between runs {each['between_s']:.1f}")
    sealed = found.get("holdout")
    if sealed:
        spread = f" ± {sealed['half_width']:.6f}" if sealed["half_width"] is not None else ""
        lines.append(f"- **Holdout** (a split only the evaluator reads, never selected on): baseline "
                     f"{sealed['baseline'].text()} → best {sealed['best'].text()}, gain {sealed['gain']:+.6f}{spread}"
                     + (" — **the holdout does not support the val gain: the night may have selected on noise**"
                        if sealed["supported"] is False else ""))
    noise = found["noise"]
    if noise.usable is not None:
        lines.append(f"- **Noise**: one run of identical code varies by σ ≈ {noise.usable:.6f} "
                     f"({noise.pairs} identical-code pairs)")
    scaled = [r for r in rows if r.get("overflow_steps") is not None]  # float16 runs
    if scaled:
        skipped = overflow_text(sum(r["overflow_steps"] for r in scaled), sum(r.get("num_steps") or 0 for r in scaled))
        lines.append(f"- **Float16 loss scaling**: {skipped} over {count(len(scaled), 'run')} "
                     "(a step whose gradients overflow is skipped)")
    if found["segments"] > 1:
        starts = facts.segment_starts(rows)[1:]
        lines.append("- **Segments**: conditions changed at " + "; ".join(
            f"#{s['index']} ({s['reason'] or 'see the rows'})" for s in starts)
                     + "; the figures above are the last segment's, numbers are never compared across segments")
    lines.append(f"- **Wall time**: {duration(wall_time(record))}")
    lines.append(f"- **Cost**: {cost_text(money['cost_usd'], money['subscription_usd'], money['unpriced'])}"
                 + (f" ({money['tokens']['input_tokens']:,} input / "
                    f"{money['tokens']['output_tokens']:,} output tokens)"
                    if money["tokens"]["input_tokens"] else ""))
    inflight = record.get("inflight")
    if inflight:
        lines.append(f"- **Still running** at export ({record.get('exported_at')}): "
                     f"{progress_note(record)}")
    return "\n".join(lines)


def progress_note(record: dict) -> str:
    """How far a run that is still going had got."""
    rows, run = record.get("rows") or [], record.get("run") or {}
    inflight = record.get("inflight") or {}
    done = f"{len(rows)} experiment{'' if len(rows) == 1 else 's'} finished"
    if run.get("max_experiments"):
        done += f" ({facts.counted(rows)} of at most {run['max_experiments']} runs counted)"
    running = [t for t in inflight.get("tracks") or [] if t.get("job")]
    waiting = [t for t in inflight.get("tracks") or [] if not t.get("job")]
    if running:
        done += "; running now: " + "; ".join(
            f"{t.get('description') or t.get('role')} ({t['job'].get('worker', '')})" for t in running)
    if waiting:
        done += f"; {len(waiting)} waiting for a worker"
    if inflight.get("drafts"):
        done += f"; {len(inflight['drafts'])} drafted, not yet run"
    return done
