"""The device agent: serves a signed bundle's model, reports telemetry over MQTT, and updates itself safely.

Importing this package imports nothing heavy. The agent never imports torch,
tensorflow, the toolchain or the registry (a test checks `sys.modules`); it
talks to the registry only through the `edgewire` contract and reads bundles
only through `edgebundle`. docs/agent.md describes how it works.
"""

from __future__ import annotations


def agent_version() -> str:
    """The installed edgectl version (the agent ships in the same distribution)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgectl")
    except PackageNotFoundError:
        return "0+unknown"
