"""Argument parsing and help for the %autoresearch magic: subcommands, options, one-line errors."""
from __future__ import annotations

import argparse
import re
import shlex
import textwrap

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser

from .options import ABLATE, PROFILES, RUN, TRANSFER, add_options


class _Commands:
    """The subcommands, in order, with plain argparse formatting (IPython's formatter adds
    reST markup to usage lines, which reads badly in `%autoresearch?`)."""

    def __init__(self, subparsers):
        self._subparsers = subparsers
        self.listed: list[tuple[str, argparse.ArgumentParser, str]] = []

    def add_parser(self, name: str, help: str):
        parser = self._subparsers.add_parser(name, help=help, formatter_class=argparse.HelpFormatter)
        self.listed.append((name, parser, help))
        return parser


def build_parser() -> tuple[MagicArgumentParser, _Commands]:
    parser = MagicArgumentParser(prog="%autoresearch", formatter_class=argparse.HelpFormatter,
                                 description="Run an autonomous research lab from this notebook.")
    commands = _Commands(parser.add_subparsers(dest="subcommand", metavar="COMMAND"))
    init = commands.add_parser("init", help="create a lab (default ./autoresearch-lab)")
    init.add_argument("dir", nargs="?", metavar="DIR", help="where to create it")
    init.add_argument("--profile", default="auto", choices=PROFILES,
                      help="hardware profile (default: picked from the hardware)")
    init.add_argument("--data", default="builtin", metavar="SOURCE",
                      help="builtin, tinystories, fineweb-edu, or a path")
    start = commands.add_parser("start", help="start a run in the background and show the dashboard")
    start.add_argument("--lab", metavar="DIR", help="the lab directory (default: the last one used)")
    add_options(start, RUN)
    ablate = commands.add_parser("ablate", help="measure each kept change's own contribution to the best")
    ablate.add_argument("--lab", metavar="DIR", help="the lab directory (default: the last one used)")
    add_options(ablate, ABLATE)
    transfer = commands.add_parser("transfer", help="do the kept changes hold at a larger scale? the transfer ladder")
    transfer.add_argument("--lab", metavar="DIR", help="the lab directory (default: the last one used)")
    add_options(transfer, TRANSFER)
    stop = commands.add_parser("stop", help="stop after the current experiment")
    stop.add_argument("--now", action="store_true", help="kill the current experiment (recorded)")
    commands.add_parser("pause", help="hold before the next experiment")
    commands.add_parser("resume", help="go on after a pause")
    commands.add_parser("status", help="show the dashboard (text in a terminal)")
    check = commands.add_parser("check", help="verify the lab's invariants (ledger, results.tsv, branch, leftovers)")
    check.add_argument("--lab", metavar="DIR", help="the lab directory (default: the last one used)")
    wait = commands.add_parser("wait", help="block until the run ends")
    wait.add_argument("--timeout", type=float, metavar="S", help="give up waiting after S seconds")
    show = commands.add_parser("show", help="one experiment: metrics, rationale, diff, log tail")
    show.add_argument("n", type=int, metavar="N")
    diff = commands.add_parser("diff", help="experiment N against its parent, or against M")
    diff.add_argument("n", type=int, metavar="N")
    diff.add_argument("m", type=int, nargs="?", metavar="M")
    apply = commands.add_parser("apply", help="experiment N's file in a new cell")
    apply.add_argument("n", type=int, metavar="N")
    apply.add_argument("--write", action="store_true", help="write it to the lab's working file")
    apply.add_argument("--file", metavar="PATH", help="which allowed file (default: the first)")
    commands.add_parser("steer", help="a note the agent reads before its next proposal")
    export = commands.add_parser("export", help="write the results notebook")
    export.add_argument("path", nargs="?", metavar="PATH", help="output .ipynb or directory")
    export.add_argument("--html", action="store_true", help="also write an HTML page")
    return parser, commands


PARSER, COMMANDS = build_parser()


def help_text() -> str:
    lines = ["Run an autonomous research lab from this notebook.", "",
             "%%program            the cell becomes the lab's charter (program.md); shows the change",
             "%program             shows the current charter", "",
             "%autoresearch COMMAND [options]:"]
    for name, parser, summary in COMMANDS.listed:
        usage = parser.format_usage().replace("usage: ", "").strip()
        if name == "steer":  # its text is taken verbatim, outside the parser
            usage += " TEXT"
        # Wrap between options, never inside one ([--max-experiments N] stays whole).
        options = re.findall(r"\[[^\]]*\]|\S+", " ".join(usage.split()))
        wrapped = textwrap.wrap(" ".join(o.replace(" ", "\0") for o in options), 96,
                                break_long_words=False, break_on_hyphens=False,
                                initial_indent="  ", subsequent_indent="      ")
        lines += [line.replace("\0", " ") for line in wrapped] + [f"      {summary}"]
    lines += ["",
              "The lab is the last one given to init or start --lab (default ./autoresearch-lab).",
              "One run per kernel; it runs in a background thread and the kernel stays free."]
    return "\n".join(lines)


def parse(line: str):
    """The parsed line; `steer` keeps its text verbatim."""
    head, _, rest = line.strip().partition(" ")
    if head == "steer":
        text = rest.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1].strip()
        if not text:
            raise UsageError("say what to steer toward, e.g. %autoresearch steer try a smaller model")
        return PARSER.parse_args(["steer"]), text
    try:
        words = shlex.split(line)
    except ValueError as error:
        raise UsageError(f"could not read the line ({error}); check the quotes") from None
    if not words:
        raise UsageError("give a command, e.g. %autoresearch start; %autoresearch? lists them")
    return PARSER.parse_args(words), None
