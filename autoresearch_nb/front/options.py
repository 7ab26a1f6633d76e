"""The run's options, declared once: both the CLI's `run` and the magic's `start` are built from this
list, and one function turns either's parsed arguments into the engine's RunOptions."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

PROFILES = ("auto", "cpu", "mps", "cuda", "tiny")


@dataclass(frozen=True)
class Option:
    flag: str
    help: str
    type: type | None = None
    default: object = None
    metavar: str | None = None
    choices: tuple | None = None
    dest: str | None = None
    switch: bool = False   # present or absent (store_true)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.switch:
            parser.add_argument(self.flag, action="store_true", help=self.help)
            return
        extra = {"dest": self.dest} if self.dest else {}
        parser.add_argument(self.flag, type=self.type, default=self.default, metavar=self.metavar,
                            choices=self.choices, help=self.help, **extra)


RUN = (
    Option("--agent", "heuristic (offline baseline), claude, openai, claude-code, codex or command", default="heuristic",
           metavar="NAME"),
    Option("--model", "the agent's model (claude, openai, claude-code, codex)", metavar="NAME"),
    Option("--base-url", "an OpenAI-compatible endpoint (openai agent)", metavar="URL"),
    Option("--command", "the coding-agent CLI of --agent command. It runs in a scratch git copy of the lab "
           "(allowed files editable, locked ones read-only); what it changes in allowed files is the proposal. "
           "In CMD, {prompt_file} becomes the prompt's path (stdin is then empty; otherwise the prompt comes on "
           "stdin) and {description_file} the file for its one-line description (or it prints a line "
           "'DESCRIPTION: ...'); both paths are also in $AUTORESEARCH_PROMPT_FILE and "
           "$AUTORESEARCH_DESCRIPTION_FILE. Recipes for aider, claude -p and codex exec: docs/agents.md",
           metavar="CMD", dest="agent_command"),
    Option("--agent-timeout", "seconds a CLI agent (command, claude-code, codex) may take per proposal before it is killed "
           "(default 900)",
           type=float, metavar="S"),
    Option("--agent-memory", "claude-code and codex: resume one conversation from proposal to proposal (the CLI "
           "remembers what it read and tried) instead of a fresh one each time; docs/agents.md has what each costs",
           switch=True),
    Option("--budget", "seconds of training per experiment", type=float, metavar="S"),
    Option("--max-experiments", "bound on runs (baseline repeats and confirmations included; runs disturbed "
           "from outside are run again and not counted)", type=int, metavar="N"),
    Option("--tag", "run name; the branch is autoresearch/<tag> (default: the date)"),
    Option("--policy", "noise: keep gains that stand clear of seed noise (default); greedy: any gain",
           default="noise", choices=("noise", "greedy")),
    Option("--noise-runs", "extra baseline runs that measure the noise", type=int, default=2, metavar="N"),
    Option("--max-cost", "stop before spending more USD on the agent", type=float, metavar="USD"),
    Option("--seed", "the first run's seed (later runs step from it)", type=int, default=0, metavar="N"),
    Option("--resume", "continue the lab's run after a stop or a crash", switch=True),
    Option("--rebaseline", "resume under other conditions (budget, data, device...): measure the best again "
           "and start a new comparison segment", switch=True),
    Option("--workers", "experiments at once (on a CPU: slots sharing the cores; on GPUs use --gpus)",
           type=int, default=1, metavar="N"),
    Option("--gpus", "one worker per CUDA device, e.g. --gpus 0,1,2,3", metavar="LIST"),
    Option("--depth", "proposals the agent drafts ahead while experiments train (0: one after another)",
           type=int, default=1, metavar="N"),
    Option("--overlap", "a worker's next run starts up while its last is evaluated, its training clock waiting "
           "until that has ended and been recorded (off by default: on the CPU its cost was too small to "
           "measure and its saving 2%% of the night; not yet measured on a GPU; docs/lab.md)", switch=True),
    Option("--ray", "run the workers as Ray actors, one GPU each: auto, or a cluster address "
           "(pip install autoresearch-nb[ray])", metavar="ADDRESS"),
    Option("--hours", "start no run that could not end within H hours (a Colab session's limit)", type=float,
           metavar="H"),
    Option("--until", "start no run that could not end by this local time, HH:MM", metavar="HH:MM"),
    Option("--notify", "a webhook to post to when a change is kept and when the night ends or stops on "
           "failures: Slack, Discord, or ntfy (https://ntfy.sh/TOPIC?tpl=1&t={{.title}}&m={{.message}}); "
           "never stored, so give it again with --resume", metavar="URL"),
)
ABLATE = (
    Option("--repeats", "clean runs of the best without each change", type=int, default=2, metavar="N"),
    Option("--rebaseline", "conditions changed: measure the best again first", switch=True),
)


TRANSFER = (
    Option("--budget-x", "the larger scale's budget, as a multiple of the night's (default 4)", type=float,
           default=4.0, metavar="K"),
    Option("--depth", "the model's depth at that scale (default: the lab's)", type=int, metavar="N"),
    Option("--repeats", "runs of each code at that scale, paired by seed", type=int, default=2, metavar="R"),
)


def add_options(parser: argparse.ArgumentParser, options: tuple[Option, ...]) -> None:
    for option in options:
        option.add_to(parser)


def run_options(args: argparse.Namespace, lab: str):
    """The engine's RunOptions from a parsed `run`/`start` (or `ablate`, `transfer`) line: the one place they are built."""
    from ..engine.session import RunOptions

    if hasattr(args, "budget_x"):
        return RunOptions(lab=lab, transfer={"budget_x": args.budget_x, "depth": args.depth, "repeats": args.repeats})
    if hasattr(args, "repeats"):
        return RunOptions(lab=lab, ablate=args.repeats, rebaseline=args.rebaseline)
    gpus = None if args.gpus is None else [part.strip() for part in args.gpus.split(",")]
    return RunOptions(lab=lab, agent=args.agent, model=args.model, budget=args.budget,
                      max_experiments=args.max_experiments, tag=args.tag, policy=args.policy,
                      max_cost=args.max_cost, resume=args.resume, base_url=args.base_url,
                      command=args.agent_command, noise_runs=args.noise_runs, seed=args.seed,
                      rebaseline=args.rebaseline, agent_timeout=args.agent_timeout,
                      agent_memory=args.agent_memory, workers=args.workers,
                      gpus=gpus, depth=args.depth, ray=args.ray, notify=args.notify,
                      hours=args.hours, until=args.until, overlap=args.overlap)
