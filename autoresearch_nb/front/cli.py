"""The `autoresearch-nb` command: a thin front end over the lab, the session and the export."""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from ..errors import LabError
from ..report.record import read_json
from ..lab.lab import DEFAULT_DIR, Lab, init_lab, template_dir
from ..ui.text import ablation_text, measured_text, status_text, transfer_text
from .options import ABLATE, PROFILES, RUN, TRANSFER, add_options, run_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoresearch-nb", description=(
        "An autonomous research lab: an agent edits nanochat/train.py, trains it for a fixed "
        "budget, keeps what lowers val_bpb and reverts the rest."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a lab (a git repo made from the template)")
    p.add_argument("dir", nargs="?", default=DEFAULT_DIR)
    p.add_argument("--profile", default="auto", choices=PROFILES)
    p.add_argument("--data", default="builtin", help="builtin, tinystories, fineweb-edu, or a path")
    p.add_argument("--budget", type=float, default=None, help="seconds of training per experiment")

    p = sub.add_parser("prepare", help="download/build the data and train the tokenizer")
    p.add_argument("--lab", default=None, help="prepare for this lab (and record the data choice in it)")
    p.add_argument("--data", default=None, help="builtin, tinystories, fineweb-edu, or a path")
    p.add_argument("--profile", default=None, choices=PROFILES)
    p.add_argument("--byte-level", action="store_true", help="raw bytes instead of a BPE tokenizer")
    p.add_argument("--shards", type=int, default=1, help="training shards to download (hub sources)")

    p = sub.add_parser("run", help="run the research loop")
    p.add_argument("--lab", default=DEFAULT_DIR)
    add_options(p, RUN)

    p = sub.add_parser("ablate", help="measure each kept change's own contribution to the best")
    p.add_argument("--lab", default=DEFAULT_DIR)
    add_options(p, ABLATE)

    p = sub.add_parser("transfer", help="do the kept changes hold at a larger scale? the transfer ladder")
    p.add_argument("--lab", default=DEFAULT_DIR)
    add_options(p, TRANSFER)

    p = sub.add_parser("status", help="the experiments so far, the best result, counts by status")
    p.add_argument("--lab", default=DEFAULT_DIR)

    p = sub.add_parser("check", help="verify the lab's invariants (ledger, results.tsv, branch, leftovers)")
    p.add_argument("--lab", default=DEFAULT_DIR)

    p = sub.add_parser("steer", help="leave a note that the next proposals will read")
    p.add_argument("text", nargs="+")
    p.add_argument("--lab", default=DEFAULT_DIR)

    p = sub.add_parser("export", help="write an executed results notebook")
    p.add_argument("--lab", default=DEFAULT_DIR)
    p.add_argument("-o", "--output", default=None)
    p.add_argument("--html", action="store_true", help="also render HTML")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LabError as error:
        print(f"autoresearch-nb: {error}", file=sys.stderr)
        return 2


def cmd_init(args) -> int:
    if args.budget is not None and args.budget <= 0:
        raise LabError(f"--budget must be a positive number of seconds (got {args.budget:g})")
    lab, created = init_lab(args.dir, args.profile, args.data, args.budget)
    if not created:
        print(f"{lab.root} is already a lab; nothing changed. Run it with `autoresearch-nb run --lab {args.dir}`.")
        return 0
    print(f"created lab {lab.root} (git repo, branch main): edit {lab.charter_path.name} for the charter, "
          f"then `autoresearch-nb run --lab {args.dir}`")
    return 0


def cmd_prepare(args) -> int:
    cwd = template_dir()
    if args.lab:
        lab = Lab.open(args.lab)
        cwd = lab.root
        if args.data:
            lab.config["data"] = args.data
        if args.profile:
            lab.config["profile"] = args.profile
        lab.config["byte_level"] = bool(args.byte_level)
        lab.save_config()
    cmd = [sys.executable, "nanochat/prepare.py", "--shards", str(args.shards)]
    if args.data:  # otherwise prepare.py reads the lab's own choice (or the default, builtin)
        cmd += ["--data", args.data]
    if args.profile:
        cmd += ["--profile", args.profile]
    if args.byte_level:
        cmd.append("--byte-level")
    return subprocess.call(cmd, cwd=cwd)


def cmd_run(args) -> int:
    from ..engine.session import Session
    from .keep_report import KeepReport

    session = Session(run_options(args, args.lab))
    report = KeepReport(session.lab.root)
    session.subscribe(report.handle)
    try:
        return drive(session)
    finally:
        report.close()


def cmd_ablate(args) -> int:
    return measure(args, ablation_text)


def cmd_transfer(args) -> int:
    return measure(args, transfer_text)


def measure(args, table) -> int:
    """Run an after-the-night measurement (ablate, transfer) in the foreground, then print its table."""
    from ..engine.session import Session

    code = drive(Session(run_options(args, args.lab)))
    if code == 0:
        lab = Lab.open(args.lab)
        print(table(lab.rows(), lab.config.get("metric", "val_bpb"), lab.config.get("direction", "lower")))
    return code


def drive(session) -> int:
    """Run a session in the foreground: progress lines, Ctrl-C stops it cleanly."""
    from .progress import TerminalProgress

    progress = TerminalProgress(sys.stdout)
    # a resumed run's first lines compare with its best so far
    progress.best = next((r["best"] for r in reversed(session.snapshot()["rows"]) if r.get("best") is not None), None)
    session.subscribe(progress.handle)
    interrupted = []

    def on_sigint(signum, frame):  # Ctrl-C: stop now, record, leave the tree clean
        if not interrupted:
            print("\nstopping: the current experiment is recorded as interrupted (resume with --resume)", flush=True)
        interrupted.append(signum)
        session.stop(now=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        session.start()
        while not session.wait(0.5):
            pass
    finally:
        signal.signal(signal.SIGINT, previous)
    progress.close()
    print(progress.final_line(session.snapshot()))
    if session.error:
        print(f"autoresearch-nb: {session.error}", file=sys.stderr)
        return 2 if session.usage_error else 1
    return 130 if interrupted else 0


def cmd_status(args) -> int:

    lab = Lab.open(args.lab)
    header = read_json(lab.run_info_path)
    header["lab"] = str(lab.root)
    note = read_json(lab.inflight_path)
    tracks = note.get("tracks") or []
    lanes = {t["job"].get("worker", "?"): {"description": t.get("description", ""), "worker": t["job"].get("worker"),
                                           "role": t.get("role")} for t in tracks if t.get("job")}
    queue = {"waiting": [t.get("description") for t in tracks if not t.get("job")],
             "drafts": len(note.get("drafts") or [])}
    state = "running" if lanes else "idle"
    message = ("experiments under way (or left by a stopped run: `run --resume` re-queues them)" if lanes
               else "work waiting: `run --resume` goes on with it" if tracks or note.get("drafts") else "")
    snapshot = {"header": header, "rows": lab.rows(), "state": state, "message": message, "lanes": lanes,
                "current": next(iter(lanes.values()), None), "queue": queue}
    print(status_text(snapshot, lab.config.get("metric", "val_bpb"), lab.config.get("direction", "lower"),
                      limit=None))
    table = measured_text(lab.rows(), lab.config.get("metric", "val_bpb"), lab.config.get("direction", "lower"))
    if table:
        print("\n" + table)
    return 0


def cmd_check(args) -> int:
    from ..lab.labcheck import report

    holds, text = report(Lab.open(args.lab))
    print(text)
    return 0 if holds else 1


def cmd_steer(args) -> int:
    lab = Lab.open(args.lab)
    text = " ".join(" ".join(args.text).split())
    if not text:
        raise LabError('steer needs a note, e.g. autoresearch-nb steer "try a deeper, narrower model"')
    lab.state_dir.mkdir(exist_ok=True)
    with open(lab.steering_path, "a", encoding="utf-8") as handle:
        handle.write(f"[{time.strftime('%Y-%m-%dT%H:%M:%S')}] {text}\n")
    print(f"noted; the next proposals will read it ({lab.steering_path})")
    return 0


def cmd_export(args) -> int:
    from ..report.export import export_lab

    path = export_lab(args.lab, args.output, html=args.html)
    print(f"wrote {path}")
    return 0


COMMANDS = {"init": cmd_init, "prepare": cmd_prepare, "run": cmd_run, "ablate": cmd_ablate, "transfer": cmd_transfer,
            "status": cmd_status,
            "check": cmd_check, "steer": cmd_steer, "export": cmd_export}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
