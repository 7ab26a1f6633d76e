"""Errors a user can fix: each carries one line saying what to do."""


class LabError(Exception):
    """A user mistake or an unusable lab; front ends show the message alone (CLI exit code 2)."""


class LabGone(LabError):
    """The lab's folder cannot be read any more mid-run (a network drive unmounted): the night stops."""

    def __init__(self, root):
        super().__init__(f"the lab at {root} cannot be read any more (was its drive unmounted?). What it recorded "
                         "is kept there: mount it again (on Colab: drive.mount('/content/drive')), then resume "
                         "with `%autoresearch start --resume` (CLI: autoresearch-nb run --resume)")
