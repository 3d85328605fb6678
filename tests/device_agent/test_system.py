"""System telemetry: psutil on every device, jetson-stats' varying key names on Jetsons."""

from __future__ import annotations

from device_agent.system import SystemProbe, parse_jetson_stats


def test_jetson_stats_of_old_and_new_versions():
    v4 = {"GPU": 37.5, "Temp gpu": 48.2, "Temp cpu": 50.1, "Power TOT": 7321, "RAM": 0.4}
    assert parse_jetson_stats(v4) == {"gpu_percent": 37.5, "gpu_temperature_c": 48.2, "power_w": 7.321}
    v3 = {"GPU": 5, "Temp GPU": 41.0, "power cur": 2000, "Temp PLL": -256}
    assert parse_jetson_stats(v3) == {"gpu_percent": 5.0, "gpu_temperature_c": 41.0, "power_w": 2.0}
    assert parse_jetson_stats({"GPU": "OFF", "Temp gpu": -256}) == {}


def test_the_probe_reports_this_machine():
    probe = SystemProbe()
    stats = probe.sample()
    assert stats.memory_percent is not None and 0 < stats.memory_percent <= 100
    assert stats.agent_rss_mb is not None and stats.agent_rss_mb > 1
    assert stats.cpu_percent is not None and stats.gpu_percent is None
    probe.close()
