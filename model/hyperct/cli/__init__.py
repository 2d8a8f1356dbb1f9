"""The ``hyperct`` command line (headless)."""
