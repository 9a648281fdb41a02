"""What each fault code means and what clears it: one table for the API, the page and the runbook."""

from __future__ import annotations

# code -> (meaning, what clears it). docs/runbook.md explains each in full.
FAULTS: dict[str, tuple[str, str]] = {
    "ERR_GRID_SYNC_LOST": (
        "Grid frequency or voltage left the trip band; the inverter is in safe mode (0 W, contactors open).",
        "Latched: `meshagent clear-faults` once the grid has been back inside the return-to-service band for its delay.",
    ),
    "ERR_BATTERY_LOWER_LIMIT": (
        "The vehicle reached its minimum state of charge or the BMS Battery_Lower_Limit (ISO 15118-20 0x03).",
        "Clears by itself once the vehicle is back above its minimum SoC plus the rejoin margin (charging).",
    ),
    "ERR_THERMAL": (
        "Inverter or battery temperature outside its limits; discharge derated or stopped.",
        "Clears by itself once the temperature is back inside the limits by the hysteresis margin.",
    ),
    "ERR_CONTACTOR_WELD": (
        "The contactors stayed closed after an open command: welded contacts.",
        "Latched: a technician inspects or replaces the contactor, then `meshagent clear-faults`.",
    ),
    "ERR_TAMPER": (
        "The enclosure was opened: contactors opened at once.",
        "Latched: close the enclosure, check the site, then `meshagent clear-faults`.",
    ),
    "ERR_SENSOR_LOST": (
        "No valid site-meter reading within the sensor timeout; discharge forced to 0 W.",
        "Latched: restore the meter link (wiring, Modbus address), then `meshagent clear-faults`.",
    ),
    "LATENCY_OVER_BUDGET": (
        "A control cycle took longer than its budget, control.cycle_budget (a report, not a state).",
        "Nothing to clear: check CPU load and the Modbus link if it repeats.",
    ),
}


def describe(code: str) -> dict[str, str]:
    meaning, clears = FAULTS.get(code, ("Unknown code (newer agent?).", "See the runbook."))
    return {"code": code, "meaning": meaning, "clears": clears}
