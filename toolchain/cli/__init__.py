"""The `edgectl` command line: one module per command group, `main` only adds them."""
