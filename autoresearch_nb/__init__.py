"""autoresearch-nb: an autonomous research lab that lives in a notebook."""

__version__ = "0.1.0"


def load_ipython_extension(ipython):
    """`%load_ext autoresearch_nb` registers the %autoresearch and %%program magics."""
    from .magics import register

    register(ipython)


def unload_ipython_extension(ipython):
    from .magics import unregister

    unregister(ipython)
