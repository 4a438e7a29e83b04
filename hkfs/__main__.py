"""`python -m hkfs` runs the hk command."""

from .cli import main

main()
