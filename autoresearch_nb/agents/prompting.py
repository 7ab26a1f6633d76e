"""What an LLM agent reads: a stable system prompt (charter + lab rules) and the context of this round."""
from __future__ import annotations

from ..lab.words import STATUS_WORDS
from .base import Context

MAX_TABLE_ROWS = 60
MAX_DIFF_CHARS = 8_000
MAX_FAILURE_CHARS = 4_000
MAX_JOURNAL_CHARS = 6_000
# What the harness holds nanochat/train.py to (audit.py before the run, prepare.py's export and
# evaluator after it), said up front.
NANOCHAT_RULES = """
- In nanochat/train.py: use prepare's DEVICE, PROFILE, SEQ_LEN, TIME_BUDGET, TrainingClock,
  autocast_context, fail, finish, load_tokenizer and make_train_loader only, and do not change them;
  set no seeds (the harness does); the file ends with its one call finish(model, clock, ...).
- finish() hands the model over with torch.export and a separate process evaluates it, so the model
  must export: model(tokens) returns a plain tensor of logits (batch, time, vocab); no Python branch
  on tensor values in forward; nothing kept from one call to the next (no buffers or tensors written
  in forward, no randomness at evaluation); later tokens never change earlier logits. An export
  failure is its own crash kind, with the exporter's message.
- Training is timed by the harness from the moment the clock starts until the model is handed over
  (export included); on the CPU the clock is the process's CPU time over the machine's cores. Work
  before clock.start() is limited to a few seconds on the CPU. The validation data is not readable."""
TOOLS_FINISH = ("Edit with the text editor tool (paths relative to the lab, as listed above), "
                "then call submit_experiment once with a one-line description and your rationale.")


def system_prompt(context: Context, finish: str = "", files_rule: str = "") -> str:
    """The charter and the lab's rules: the same for every proposal of a run, so it caches.

    `finish` replaces the tool instructions and `files_rule` the line on which files may be
    edited, for agents that edit a tree themselves (CLIs).
    """
    better = "lower" if context.direction == "lower" else "higher"
    allowed = ", ".join(context.allowed) or "(none)"
    locked = ", ".join(context.locked) or "(none)"
    files_rule = files_rule or (f"Files you may edit: {allowed}. Files that are locked: {locked}. "
                                "Edits anywhere else are refused.")
    profile = "".join(f"\n- {key}: {value}" for key, value in sorted(context.profile.items()))
    nanochat_rules = NANOCHAT_RULES if "nanochat/train.py" in context.allowed else ""
    return f"""You are the researcher in an autonomous research lab. Each round you propose one
experiment: a change to the training code that you expect to improve the metric. The harness
then trains with your code for a fixed time budget, measures {context.metric} with fixed
evaluation code, keeps the change if {context.metric} is clearly better ({better} is better)
and reverts it otherwise.

# The person's charter (program.md)

{context.charter.strip()}

# Lab rules (enforced by the harness)

- {files_rule}
- Training runs for a fixed budget of {context.budget:g} seconds; the budget, the data, the
  evaluation and the summary belong to the harness. A change that prints its own metric line,
  patches or redefines the fixed code, changes the time budget or the seeds, or writes results
  files is rejected before it runs or refused after it.{nanochat_rules}
- One idea per experiment, so the result says something. Keep the code simple: a tiny gain that
  adds a lot of code is not worth keeping; an equal result from deleting code is a win.
- An idea already tried (the same change) is rejected without running: read the history.
- {finish or TOOLS_FINISH} Do not ask questions; nobody is there to answer.
- Hardware:{profile or " unknown"}
"""


def files_block(context: Context) -> str:
    """The current best contents of the allowed files (changes only when an experiment is kept)."""
    parts = ["# The files you may edit, as of the best experiment so far\n"]
    for path in context.allowed:
        if path in context.files:
            parts.append(f'<file path="{path}">\n{context.files[path]}\n</file>\n')
    return "\n".join(parts)


def situation_block(context: Context, task: str = "") -> str:
    """History, best diff, last failure, journal and steering: what changed since last round.

    `task` replaces the closing instruction (which names the editor and submit tools).
    """
    sections = [f"# Results so far ({context.metric}, {context.direction} is better)\n",
                results_table(context)]
    if context.baseline is not None:
        sections.append(f"Baseline {context.metric}: {context.baseline:.6f}.")
    if context.best is not None:
        sections.append(f"Best {context.metric} so far: {context.best:.6f}.")
    if context.best_diff.strip():
        sections.append("# The best code so far against the baseline\n\n```diff\n"
                        + _tail(context.best_diff, MAX_DIFF_CHARS) + "\n```")
    if context.last_failure.strip():
        sections.append("# Log tail of the most recent failed run\n\n```\n"
                        + _tail(context.last_failure, MAX_FAILURE_CHARS) + "\n```")
    if context.journal.strip():
        sections.append("# Research journal (lessons from earlier results)\n\n"
                        + _tail(context.journal, MAX_JOURNAL_CHARS))
    if context.steering:
        notes = "\n".join(f"- {note}" for note in context.steering)
        sections.append("# Notes from the person steering this run (newest last; follow them)\n\n"
                        + notes)
    if context.in_flight:
        running = "\n".join(f"- {what}" for what in context.in_flight)
        sections.append("# Experiments running now (their results are not in yet; propose something else)\n\n"
                        + running)
    task = task or "make one focused change with the editor, then call submit_experiment."
    sections.append(f"# Your task\n\nPropose experiment #{context.index}: {task}")
    return "\n\n".join(sections)


def results_table(context: Context) -> str:
    """A compact table of the ledger rows, the oldest ones elided on long runs."""
    rows = context.history
    if not rows:
        return "(no experiments yet)"
    lines = [f"| # | status | {context.metric} | description |", "|---|---|---|---|"]
    omitted = max(0, len(rows) - MAX_TABLE_ROWS)
    if omitted:
        lines.append(f"| … | {omitted} earlier rows omitted | | |")
    for row in rows[omitted:]:
        value = row.get(context.metric)
        shown = f"{value:.6f}" if isinstance(value, (int, float)) else "-"
        status = row.get("status", "?")
        if row.get("kind") and status in ("crash", "rejected"):
            status = f"{status} ({row['kind']})"
        note = " ".join(str(row.get("description", "")).split())
        if row.get("role") and row.get("role") != "experiment":
            note = f"[{row['role']}] {note}"
        if status.startswith(("crash", "rejected")) and row.get("reason"):
            note += f" — {' '.join(str(row['reason']).split())[:120]}"
        lines.append(f"| {row.get('index', '?')} | {status} | {shown} | {note.replace('|', '/')} |")
    return "\n".join(lines)


def templated_lesson(context: Context, row: dict) -> str:
    """A one-line journal entry from a result, written without another API call."""
    value = row.get(context.metric)
    shown = f"{value:.6f}" if isinstance(value, (int, float)) else "no result"
    status = row.get("status")
    verdict = "no gain, reverted" if status == "discard" else STATUS_WORDS.get(status, "?")
    line = f"- #{row.get('index', '?')} {row.get('description', '').strip()}: {verdict} ({shown})"
    if row.get("status") in ("crash", "rejected") and row.get("reason"):
        line += f"; {' '.join(str(row['reason']).split())[:160]}"
    return line


def _tail(text: str, limit: int) -> str:
    text = text.strip("\n")
    return text if len(text) <= limit else "…(earlier part cut)\n" + text[-limit:]
