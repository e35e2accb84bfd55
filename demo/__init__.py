"""The embedded demo: simulator + in-process broker + the real worker code. Not part of the
installed product; run from the repository root with ``python -m demo``."""
