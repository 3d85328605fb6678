"""`python -m edgectl`, the same as the `edgectl` command."""

from edgectl.main import run

run()
