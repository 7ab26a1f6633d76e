"""Errors a user can fix: each carries one line saying what to do."""


class LabError(Exception):
    """A user mistake or an unusable lab; front ends show the message alone (CLI exit code 2)."""
