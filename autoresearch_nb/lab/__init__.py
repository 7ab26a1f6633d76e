"""The lab on disk: its files, git branch and worktrees, and its records (ledger, results.tsv)."""
from .lab import Lab, template_dir

__all__ = ["Lab", "template_dir"]
