"""What counts: the pure keep/discard rule, the facts of a run (baseline, best, value to beat) and the plan."""
