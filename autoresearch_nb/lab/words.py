"""The lab's vocabulary, one home: the statuses a row can have, how each is said, marked and coloured,
which count as failures, and how durations and profiles are written. Every front end reads it here."""
from __future__ import annotations

STATUSES = ("keep", "discard", "crash", "rejected", "interrupted", "disturbed")
CLEAN_STATUSES = ("keep", "discard")                                    # a judged, comparable number
RAN_STATUSES = ("keep", "discard", "crash", "interrupted", "disturbed")  # used training time
FAILED_STATUSES = ("crash", "rejected", "interrupted")                 # grouped as failures, by kind

STATUS_WORDS = {"keep": "kept", "discard": "discarded", "crash": "crashed",
                "rejected": "rejected", "interrupted": "interrupted", "disturbed": "disturbed"}
STATUS_MARK = {"keep": "keep   ", "discard": "discard", "crash": "crash  ", "rejected": "reject ",
               "interrupted": "interr.", "disturbed": "disturb"}  # the terminal's fixed-width column
STATUS_COLOURS = {"keep": "#1a7f37", "discard": "#8c959f", "crash": "#cf222e",
                  "rejected": "#9a6700", "interrupted": "#cf222e", "disturbed": "#bc4c00"}


def count(number: int, noun: str) -> str:
    """"1 run", "2 runs", "1 change kept" (the noun's first word takes the plural)."""
    first, _, rest = noun.partition(" ")
    return f"{number} {first if number == 1 else first + 's'}{' ' + rest if rest else ''}"


def duration(seconds: float | None, compact: bool = False) -> str:
    """"1 h 05 min", "4 min 07 s", "9 s"; compact (a dashboard's narrow line): "1h05m", "4m07s", "9s"."""
    if seconds is None:
        return "-" if compact else "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if compact:
        return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def cost_text(billed: float, on_subscription: float = 0.0, unpriced: int = 0) -> str:
    """"$0.43"; what a subscription covered, or proposals that came with no price, are said, never
    shown as $0 spent."""
    said = f"${billed:.2f}" if billed >= 1 or not billed else f"${billed:.4f}"
    if on_subscription:
        said += f" (+ a subscription's: ${on_subscription:.2f} at list price, not billed)"
    if unpriced:
        said += f" (+ {unpriced} proposal{'' if unpriced == 1 else 's'} whose CLI reports no price)"
    return said


def profile_name(profile) -> str:
    """The profile's name whether a record holds the name or the profile's facts."""
    if isinstance(profile, dict):
        return str(profile.get("name") or profile.get("profile") or "")
    return str(profile or "")


def overflow_text(overflow, steps) -> str:
    """"overflow steps 3 of 120": the steps a float16 run's loss scaling skipped (their gradients
    overflowed); "" without a count, as float32 and bfloat16 runs record none."""
    if overflow is None:
        return ""
    return f"overflow steps {int(overflow)}" + (f" of {int(steps)}" if steps is not None else "")


def overlap_text(seconds: float, unit: str = "s") -> str:
    """" (and 1.2s beside the last run's evaluation)": a run's start-up spent beside the last one's
    evaluation (--overlap); "" when there was none worth saying."""
    return f" (and {seconds:.1f}{unit} beside the last run's evaluation)" if seconds >= 0.05 else ""
