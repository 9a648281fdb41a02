"""Names of SunSpec enumeration values and bitfield bits, as data.

Copied from the SunSpec Alliance model definitions (``json/model_{1,701,702,704,713}.json``, the
files pysunspec2 ships; Apache-2.0), for ``meshagent read``: an enum value prints by name
(InvSt RUNNING), a bitfield as the names of its set bits. ``tests/hardware/test_registers.py``
checks this table against pysunspec2's files, so it cannot drift.
"""

from __future__ import annotations

# model id -> point name -> value (enum) or bit number (bitfield) -> symbol name
SYMBOLS: dict[int, dict[str, dict[int, str]]] = {
    1: {
    },
    701: {
        'ACType': {0: 'SINGLE_PHASE', 1: 'SPLIT_PHASE', 2: 'THREE_PHASE'},
        'St': {0: 'OFF', 1: 'ON'},
        'InvSt': {0: 'OFF', 1: 'SLEEPING', 2: 'STARTING', 3: 'RUNNING', 4: 'THROTTLED', 5: 'SHUTTING_DOWN', 6: 'FAULT', 7: 'STANDBY'},
        'ConnSt': {0: 'DISCONNECTED', 1: 'CONNECTED'},
        'Alrm': {0: 'GROUND_FAULT', 1: 'DC_OVER_VOLT', 2: 'AC_DISCONNECT', 3: 'DC_DISCONNECT', 4: 'GRID_DISCONNECT', 5: 'CABINET_OPEN', 6: 'MANUAL_SHUTDOWN', 7: 'OVER_TEMP', 8: 'OVER_FREQUENCY', 9: 'UNDER_FREQUENCY', 10: 'AC_OVER_VOLT', 11: 'AC_UNDER_VOLT', 12: 'BLOWN_STRING_FUSE', 13: 'UNDER_TEMP', 14: 'MEMORY_LOSS', 15: 'HW_TEST_FAILURE', 16: 'MANUFACTURER_ALRM'},
        'DERMode': {0: 'GRID_FOLLOWING', 1: 'GRID_FORMING', 2: 'PV_CLIPPED'},
        'ThrotSrc': {0: 'MAX_W', 1: 'FIXED_W', 2: 'FIXED_VAR', 3: 'FIXED_PF', 4: 'VOLT_VAR', 5: 'FREQ_WATT', 6: 'DYN_REACT_CURR', 7: 'LVRT', 8: 'HVRT', 9: 'WATT_VAR', 10: 'VOLT_WATT', 11: 'SCHEDULED', 12: 'LFRT', 13: 'HFRT', 14: 'DERATED'},
    },
    702: {
        'NorOpCatRtg': {0: 'CAT_A', 1: 'CAT_B'},
        'AbnOpCatRtg': {0: 'CAT_1', 1: 'CAT_2', 2: 'CAT_3'},
        'CtrlModes': {0: 'MAX_W', 1: 'FIXED_W', 2: 'FIXED_VAR', 3: 'FIXED_PF', 4: 'VOLT_VAR', 5: 'FREQ_WATT', 6: 'DYN_REACT_CURR', 7: 'LV_TRIP', 8: 'HV_TRIP', 9: 'WATT_VAR', 10: 'VOLT_WATT', 11: 'SCHEDULED', 12: 'LF_TRIP', 13: 'HF_TRIP'},
        'IntIslandCatRtg': {0: 'UNCATEGORIZED', 1: 'INT_ISL_CAPABLE', 2: 'BLACK_START_CAPABLE', 3: 'ISOCH_CAPABLE'},
        'IntIslandCat': {0: 'UNCATEGORIZED', 1: 'INT_ISL_CAPABLE', 2: 'BLACK_START_CAPABLE', 3: 'ISOCH_CAPABLE'},
    },
    704: {
        'PFWInjEna': {0: 'DISABLED', 1: 'ENABLED'},
        'PFWInjEnaRvrt': {0: 'DISABLED', 1: 'ENABLED'},
        'PFWAbsEna': {0: 'DISABLED', 1: 'ENABLED'},
        'PFWAbsEnaRvrt': {0: 'DISABLED', 1: 'ENABLED'},
        'WMaxLimPctEna': {0: 'DISABLED', 1: 'ENABLED'},
        'WMaxLimPctEnaRvrt': {0: 'DISABLED', 1: 'ENABLED'},
        'WSetEna': {0: 'DISABLED', 1: 'ENABLED'},
        'WSetMod': {0: 'W_MAX_PCT', 1: 'WATTS'},
        'WSetEnaRvrt': {0: 'DISABLED', 1: 'ENABLED'},
        'VarSetEna': {0: 'DISABLED', 1: 'ENABLED'},
        'VarSetMod': {0: 'W_MAX_PCT', 1: 'VAR_MAX_PCT', 2: 'VAR_AVAIL_PCT', 3: 'VA_MAX_PCT', 4: 'VARS'},
        'VarSetPri': {0: 'ACTIVE', 1: 'REACTIVE', 2: 'VENDOR'},
        'VarSetEnaRvrt': {0: 'DISABLED', 1: 'ENABLED'},
        'WRmpRef': {0: 'A_MAX', 1: 'W_MAX'},
        'AntiIslEna': {0: 'DISABLED', 1: 'ENABLED'},
        'PFWInj.Ext': {0: 'OVER_EXCITED', 1: 'UNDER_EXCITED'},
        'PFWInjRvrt.Ext': {0: 'OVER_EXCITED', 1: 'UNDER_EXCITED'},
        'PFWAbs.Ext': {0: 'OVER_EXCITED', 1: 'UNDER_EXCITED'},
        'PFWAbsRvrt.Ext': {0: 'OVER_EXCITED', 1: 'UNDER_EXCITED'},
    },
    713: {
        'Sta': {0: 'OK', 1: 'WARNING', 2: 'ERROR'},
    },
}
