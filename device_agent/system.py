"""System metrics for telemetry: psutil everywhere, jetson-stats (jtop) on a Jetson when it is installed."""

from __future__ import annotations

import contextlib
import logging

from edgewire import SystemStats

log = logging.getLogger(__name__)
MIB = 2**20


def parse_jetson_stats(stats: dict) -> dict[str, float]:
    """GPU load, GPU temperature and board power from a jtop `stats` dict (key names vary across versions)."""

    def number(value) -> float | None:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    found: dict[str, float] = {}
    gpu = number(stats.get("GPU"))
    if gpu is not None:
        found["gpu_percent"] = gpu
    for key, value in stats.items():
        lowered = str(key).lower()
        if lowered.startswith("temp") and "gpu" in lowered and number(value) is not None and value > -50:
            found["gpu_temperature_c"] = float(value)
    for key in ("Power TOT", "power cur", "Power cur"):
        power = number(stats.get(key))
        if power is not None:
            found["power_w"] = power / 1000.0  # jtop reports milliwatts
            break
    return found


class SystemProbe:
    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        psutil.cpu_percent(None)  # the first call only starts the measurement
        self._jtop = self._open_jtop()

    @staticmethod
    def _open_jtop():
        import importlib.util

        if importlib.util.find_spec("jtop") is None:
            return None
        try:
            from jtop import jtop

            handle = jtop()
            handle.start()
            return handle
        except Exception as exc:  # the jtop service is not running, or not a Jetson
            log.info("jetson-stats is installed but unusable (%s); no GPU or power telemetry", exc)
            return None

    def close(self) -> None:
        if self._jtop is not None:
            with contextlib.suppress(Exception):
                self._jtop.close()

    def rss_mb(self) -> float:
        return self._process.memory_info().rss / MIB

    def _temperature(self) -> float | None:
        reader = getattr(self._psutil, "sensors_temperatures", None)
        if reader is None:
            return None
        try:
            readings = [t.current for sensors in reader().values() for t in sensors if t.current is not None]
        except (OSError, RuntimeError):
            return None
        return max(readings) if readings else None

    def sample(self) -> SystemStats:
        memory = self._psutil.virtual_memory()
        values: dict[str, float | None] = {
            "cpu_percent": self._psutil.cpu_percent(None),
            "memory_used_mb": round((memory.total - memory.available) / MIB, 1),
            "memory_percent": memory.percent,
            "agent_rss_mb": round(self.rss_mb(), 1),
            "temperature_c": self._temperature(),
        }
        if self._jtop is not None:
            try:
                values.update(parse_jetson_stats(self._jtop.stats))
            except Exception as exc:
                log.debug("jtop read failed: %s", exc)
        return SystemStats(**values)
