"""A lab's record read back: figures, tables, the progress chart and the exported results notebook."""
