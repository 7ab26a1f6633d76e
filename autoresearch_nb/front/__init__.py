"""The thin front ends: the command line, the notebook magics and the text progress they print."""
