"""`python -m bench.transfer ...`, from the repository root."""

from bench.transfer.cli import main

main()
