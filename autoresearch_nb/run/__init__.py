"""One experiment: the runner, its sandbox and file boundary, the audit, and the workers that run it."""
