"""`python -m hkfs` runs the hk command."""

from .cli.main import main

main()
