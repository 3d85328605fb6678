"""The `edgectl` command line, the top floor: one module per command group; `main` only adds them.

It composes the programs below it (the toolchain, `mobile_export`, the registry's typed client, and
the registry server for `edgectl registry serve`); no program imports it.
"""
