"""`python -m autoresearch_nb` is the same as the `autoresearch-nb` command."""
import sys

from .front.cli import main

sys.exit(main())
