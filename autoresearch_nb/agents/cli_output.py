"""Reading what a coding-agent CLI printed: its stated description, its last words, signs of an outage."""
from __future__ import annotations

import os
import re
import shlex

MAX_DESCRIPTION_CHARS = 160
MAX_RATIONALE_CHARS = 500   # the journal keeps this much of a hypothesis
TAIL_LINES = 8
TAIL_CHARS = 600
OUTAGE_SCAN_LINES = 60

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
# "DESCRIPTION: ..." with the markdown a model may wrap it in ("**DESCRIPTION:** ...", "- ...").
MARKED = re.compile(r"^[\s>*_`#-]*(DESCRIPTION|RATIONALE)[*_`]*\s*:[*_`]*\s*(.*?)[\s*_`]*$")
# What CLIs print when their API is down, overloaded or refusing them: aider (litellm's error
# names and its own explanations), Claude Code ("API Error: 529 ... overloaded_error"), Codex
# ("exceeded retry limit, last status: 429"; "stream disconnected before completion"; on a 5xx since
# 0.17x: "Reconnecting... 2/5 (We're currently experiencing high demand ...)").
OUTAGE = re.compile(
    r"servers? (?:are|is) down|overloaded|service unavailable|bad gateway|gateway time-?out"
    r"|internal server error|InternalServerError|ServiceUnavailableError|BadGatewayError"
    r"|APIConnectionError|RateLimitError|rate[ _-]limit(?:ed|_error)|too many requests"
    r"|connection (?:refused|reset|error)|timed out|exceeded retry limit|stream disconnected"
    r"|experiencing high demand|reconnecting\.{3} \d+/\d+"
    r"|error sending request|(?:api error|status|http|error)\W{0,3}(?:code\W{0,3})?(?:429|5\d\d)\b"
    r"|not able to authenticate|invalid (?:x-)?api[ _-]key|authentication_error|\b401 unauthorized",
    re.IGNORECASE)
ENV_OPTIONS_WITH_VALUE = {"-u", "--unset", "-C", "--chdir", "-S", "--split-string"}


def clean_lines(output: str) -> list[str]:
    """Non-empty lines without colour codes or carriage-return redraws, whitespace collapsed."""
    lines = []
    for raw in ANSI.sub("", output).splitlines():
        line = " ".join(raw.rsplit("\r", 1)[-1].split())
        if line:
            lines.append(line)
    return lines


def last_line(output: str) -> str:
    lines = clean_lines(output)
    return lines[-1] if lines else ""


def tail(output: str) -> str:
    """The last few lines, joined with " / ", at most TAIL_CHARS (the end is kept)."""
    text = " / ".join(clean_lines(output)[-TAIL_LINES:]) or "(it printed nothing)"
    return text if len(text) <= TAIL_CHARS else "…" + text[-TAIL_CHARS + 1:]


def looks_like_outage(output: str) -> bool:
    """True when the end of the output reads like an API that is down or refusing the CLI."""
    return any(OUTAGE.search(line) for line in clean_lines(output)[-OUTAGE_SCAN_LINES:])


def stated_description(file_text: str, output: str) -> tuple[str, str]:
    """(description, rationale) the CLI gave: from the description file (first line, then the
    rest; or marked lines in it), else the last `DESCRIPTION:`/`RATIONALE:` lines it printed."""
    marked = _marked(file_text)
    if file_text.strip() and not marked.get("DESCRIPTION"):
        lines = [line for line in file_text.strip().splitlines()]
        marked = {"DESCRIPTION": lines[0], "RATIONALE": " ".join(lines[1:])}
    if not _usable(marked.get("DESCRIPTION", "")):
        marked = _marked(output)
    description = _usable(marked.get("DESCRIPTION", ""))
    rationale = " ".join(marked.get("RATIONALE", "").split()) if description else ""
    return _cut(description, MAX_DESCRIPTION_CHARS), _cut(rationale, MAX_RATIONALE_CHARS)


def _cut(text: str, limit: int) -> str:
    """At most `limit` characters, cut between words."""
    if len(text) <= limit:
        return text
    return text[:limit - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"


def _marked(text: str) -> dict[str, str]:
    found = {}
    for line in clean_lines(text):
        match = MARKED.match(line)
        if match and match.group(2):
            found[match.group(1)] = match.group(2)  # the last one wins: it is the final answer
    return found


def _usable(text: str) -> str:
    """The line without quotes; "" for an empty one or a placeholder like "<what changed>"."""
    text = " ".join(text.split()).strip("\"'`")
    return "" if not text or (text.startswith("<") and text.endswith(">")) else text


def program_name(command: str) -> str:
    """The program a command line runs: `HOME=/tmp/x env -u KEY aider --yes` -> "aider"."""
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: the shell will say so when it runs
        words = command.split()
    in_env, index = False, 0
    while index < len(words):
        word = words[index]
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word):
            index += 1
        elif os.path.basename(word) == "env":
            in_env, index = True, index + 1
        elif in_env and word.startswith("-"):
            index += 2 if word in ENV_OPTIONS_WITH_VALUE else 1
        else:
            return os.path.basename(word) or word
    return command.strip().split()[0] if command.strip() else ""
