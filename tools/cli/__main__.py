"""`python -m tools.cli`: the same as the `fellowship` command."""

from tools.cli.main import main

main()
