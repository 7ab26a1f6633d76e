"""The research loop and the session that runs it: scheduling, verdicts, in-flight state, resume."""
