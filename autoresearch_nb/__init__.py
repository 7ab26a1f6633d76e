"""autoresearch-nb: an autonomous research lab that lives in a notebook.

The folders are the layers, each importing only those below it:
lab (the lab's files and records) < run, judge (one experiment; the rules for keeping) < agents, ui
< engine (the loop and the session) < report (records, tables, export) < front (CLI, magics).
"""
from .version import __version__

# Flat names of earlier versions that reached users (exported notebooks run
# `from autoresearch_nb import analysis`), kept as aliases of where they live now.
_MOVED = {"analysis": "report.analysis", "export": "report.export", "magics": "front.magics", "cli": "front.cli"}


def __getattr__(name: str):
    if name in _MOVED:
        from importlib import import_module

        return import_module(f"{__name__}.{_MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_ipython_extension(ipython):
    """`%load_ext autoresearch_nb` registers the %autoresearch and %%program magics."""
    from .front.magics import register

    register(ipython)


def unload_ipython_extension(ipython):
    from .front.magics import unregister

    unregister(ipython)
