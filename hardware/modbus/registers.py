"""Register maps as data: the SunSpec models we use, our own vendor models, and their codec.

Theory of operation
-------------------
A Modbus unit here is a SunSpec device: the marker ``"SunS"`` at holding register 40000,
then a chain of models (each ``ID``, ``L`` = length after those two, then its points), ended
by ``0xFFFF, 0``. ``UnitLayout`` places models one after another and gives every point an
absolute address; ``docs/register-map.md`` lists each one (``register_map_markdown()``
writes it, so the document cannot drift from this data).

Where SunSpec has an information model we follow it. The point tables of models 1, 213, 701,
702, 704 and 713 below are copied, as data, from the SunSpec Alliance's model definitions
(github.com/sunspec/models, ``json/model_*.json`` at commit 7abdf8982d5364f8ae916deee18aac86c11be36d,
Apache-2.0; the same files pysunspec2 ships). We copy rather than depend on pysunspec2: six
small tables do not justify a dependency and its loader, and pinning the data here keeps
addresses stable whatever the package does.

Units and their models:

* site meter:  1 (common), 64901 (our sample timing), 213 (three-phase wye meter, float32).
  64901 sits before 213 so one read of 36 registers gets age, W, Hz and voltage: a 10 ms
  poll is one round trip. Float32 keeps 0.1 W up to about 1 MW (a 24-bit mantissa); the
  integer SunSpec meters with scale factors cannot hold 0.1 W at hundreds of kW.
* charger:     1, 701 (DER AC measurement), 702 (capacity), 704 (AC controls: the setpoint
  goes to ``WSet``), 713 (storage capacity: the vehicle battery), 64900 (ours: state,
  contactor, faults, thermal, tamper, ISO 15118-20 vehicle link, commands).

Sign: SunSpec DER models count power out of the DER (generation: for us discharge) as
positive; 701 ``W`` and 704 ``WSet`` are therefore the negative of our ``power_w``. The
meter models count import as positive, as we do. Our vendor models use the project's sign
(+ charge / import). The codec below is the only place a sign flips.

Not-implemented values follow SunSpec (0x8000 int16, 0xFFFF uint16/enum16, 0x80000000 int32,
0xFFFFFFFF uint32, NaN float32); they decode to ``None``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence

import attrs

SUNSPEC_BASE = 40000
SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL = (0xFFFF, 0)
MAX_READ_REGS = 125

SIZES = {"uint16": 1, "int16": 1, "enum16": 1, "bitfield16": 1, "sunssf": 1, "pad": 1, "acc16": 1,
         "uint32": 2, "int32": 2, "enum32": 2, "bitfield32": 2, "acc32": 2, "float32": 2,
         "uint64": 4, "int64": 4, "acc64": 4}
NOT_IMPLEMENTED = {"int16": 0x8000, "sunssf": 0x8000, "uint16": 0xFFFF, "enum16": 0xFFFF, "bitfield16": 0xFFFF,
                   "int32": 0x80000000, "uint32": 0xFFFFFFFF, "enum32": 0xFFFFFFFF, "bitfield32": 0xFFFFFFFF,
                   "uint64": 0xFFFFFFFFFFFFFFFF, "int64": 0x8000000000000000}


class RegisterError(ValueError):
    """Registers that do not decode (wrong marker, model chain broken, bad string)."""


@attrs.frozen
class Point:
    name: str
    type: str
    size: int  # registers
    units: str
    sf: str  # name of the scale-factor point in the same model, or ""
    access: str  # "R" or "RW"
    label: str
    offset: int = 0  # registers from the model's ID register


@attrs.frozen
class Model:
    id: int
    name: str
    label: str
    points: tuple[Point, ...]  # ID and L first
    source: str

    @property
    def length(self) -> int:
        """The SunSpec ``L``: registers after ID and L."""
        return sum(p.size for p in self.points) - 2

    def point(self, name: str) -> Point:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(f"model {self.id} has no point {name!r}")


def _model(mid: int, name: str, label: str, rows: Iterable[tuple[str, str, int, str, str, str, str]],
           source: str) -> Model:
    points = [Point("ID", "uint16", 1, "", "", "R", "Model ID", 0), Point("L", "uint16", 1, "", "", "R", "Model Length", 1)]
    offset = 2
    for name_, type_, size, units, sf, access, plabel in rows:
        if type_ != "string" and SIZES[type_] != size:
            raise AssertionError(f"model {mid} point {name_}: size {size} != {SIZES[type_]}")
        points.append(Point(name_, type_, size, units, sf, access, plabel, offset))
        offset += size
    return Model(mid, name, label, tuple(points), source)


SUNSPEC_SOURCE = "SunSpec Alliance, github.com/sunspec/models json/model_{id}.json @ 7abdf89"

# (name, label, rows): rows are (point, type, size, units, scale factor point, access, label)
_SUNSPEC: dict[int, tuple[str, str, tuple[tuple[str, str, int, str, str, str, str], ...]]] = {
    1: (
        'common', 'Common',
        (
            ('Mn', 'string', 16, '', '', 'R', 'Manufacturer'),
            ('Md', 'string', 16, '', '', 'R', 'Model'),
            ('Opt', 'string', 8, '', '', 'R', 'Options'),
            ('Vr', 'string', 8, '', '', 'R', 'Version'),
            ('SN', 'string', 16, '', '', 'R', 'Serial Number'),
            ('DA', 'uint16', 1, '', '', 'RW', 'Device Address'),
            ('Pad', 'pad', 1, '', '', 'R', ''),
        ),
    ),
    213: (
        'ac_meter_abcn_float', 'wye-connect three phase (abcn) meter',
        (
            ('A', 'float32', 2, 'A', '', 'R', 'Amps'),
            ('AphA', 'float32', 2, 'A', '', 'R', 'Amps PhaseA'),
            ('AphB', 'float32', 2, 'A', '', 'R', 'Amps PhaseB'),
            ('AphC', 'float32', 2, 'A', '', 'R', 'Amps PhaseC'),
            ('PhV', 'float32', 2, 'V', '', 'R', 'Voltage LN'),
            ('PhVphA', 'float32', 2, 'V', '', 'R', 'Phase Voltage AN'),
            ('PhVphB', 'float32', 2, 'V', '', 'R', 'Phase Voltage BN'),
            ('PhVphC', 'float32', 2, 'V', '', 'R', 'Phase Voltage CN'),
            ('PPV', 'float32', 2, 'V', '', 'R', 'Voltage LL'),
            ('PPVphAB', 'float32', 2, 'V', '', 'R', 'Phase Voltage AB'),
            ('PPVphBC', 'float32', 2, 'V', '', 'R', 'Phase Voltage BC'),
            ('PPVphCA', 'float32', 2, 'V', '', 'R', 'Phase Voltage CA'),
            ('Hz', 'float32', 2, 'Hz', '', 'R', 'Hz'),
            ('W', 'float32', 2, 'W', '', 'R', 'Watts'),
            ('WphA', 'float32', 2, 'W', '', 'R', 'Watts phase A'),
            ('WphB', 'float32', 2, 'W', '', 'R', 'Watts phase B'),
            ('WphC', 'float32', 2, 'W', '', 'R', 'Watts phase C'),
            ('VA', 'float32', 2, 'VA', '', 'R', 'VA'),
            ('VAphA', 'float32', 2, 'VA', '', 'R', 'VA phase A'),
            ('VAphB', 'float32', 2, 'VA', '', 'R', 'VA phase B'),
            ('VAphC', 'float32', 2, 'VA', '', 'R', 'VA phase C'),
            ('VAR', 'float32', 2, 'var', '', 'R', 'VAR'),
            ('VARphA', 'float32', 2, 'var', '', 'R', 'VAR phase A'),
            ('VARphB', 'float32', 2, 'var', '', 'R', 'VAR phase B'),
            ('VARphC', 'float32', 2, 'var', '', 'R', 'VAR phase C'),
            ('PF', 'float32', 2, 'PF', '', 'R', 'PF'),
            ('PFphA', 'float32', 2, 'PF', '', 'R', 'PF phase A'),
            ('PFphB', 'float32', 2, 'PF', '', 'R', 'PF phase B'),
            ('PFphC', 'float32', 2, 'PF', '', 'R', 'PF phase C'),
            ('TotWhExp', 'float32', 2, 'Wh', '', 'R', 'Total Watt-hours Exported'),
            ('TotWhExpPhA', 'float32', 2, 'Wh', '', 'R', 'Total Watt-hours Exported phase A'),
            ('TotWhExpPhB', 'float32', 2, 'Wh', '', 'R', 'Total Watt-hours Exported phase B'),
            ('TotWhExpPhC', 'float32', 2, 'Wh', '', 'R', 'Total Watt-hours Exported phase C'),
            ('TotWhImp', 'float32', 2, 'Wh', '', 'R', 'Total Watt-hours Imported'),
            ('TotWhImpPhA', 'float32', 2, 'Wh', '', 'R', 'Total Watt-hours Imported phase A'),
            ('TotWhImpPhB', 'float32', 2, 'Wh', '', 'R', 'Total Watt-hours Imported phase B'),
            ('TotWhImpPhC', 'float32', 2, 'Wh', '', 'R', 'Total Watt-hours Imported phase C'),
            ('TotVAhExp', 'float32', 2, 'VAh', '', 'R', 'Total VA-hours Exported'),
            ('TotVAhExpPhA', 'float32', 2, 'VAh', '', 'R', 'Total VA-hours Exported phase A'),
            ('TotVAhExpPhB', 'float32', 2, 'VAh', '', 'R', 'Total VA-hours Exported phase B'),
            ('TotVAhExpPhC', 'float32', 2, 'VAh', '', 'R', 'Total VA-hours Exported phase C'),
            ('TotVAhImp', 'float32', 2, 'VAh', '', 'R', 'Total VA-hours Imported'),
            ('TotVAhImpPhA', 'float32', 2, 'VAh', '', 'R', 'Total VA-hours Imported phase A'),
            ('TotVAhImpPhB', 'float32', 2, 'VAh', '', 'R', 'Total VA-hours Imported phase B'),
            ('TotVAhImpPhC', 'float32', 2, 'VAh', '', 'R', 'Total VA-hours Imported phase C'),
            ('TotVArhImpQ1', 'float32', 2, 'varh', '', 'R', 'Total VAR-hours Imported Q1'),
            ('TotVArhImpQ1phA', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Imported Q1 phase A'),
            ('TotVArhImpQ1phB', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Imported Q1 phase B'),
            ('TotVArhImpQ1phC', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Imported Q1 phase C'),
            ('TotVArhImpQ2', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Imported Q2'),
            ('TotVArhImpQ2phA', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Imported Q2 phase A'),
            ('TotVArhImpQ2phB', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Imported Q2 phase B'),
            ('TotVArhImpQ2phC', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Imported Q2 phase C'),
            ('TotVArhExpQ3', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Exported Q3'),
            ('TotVArhExpQ3phA', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Exported Q3 phase A'),
            ('TotVArhExpQ3phB', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Exported Q3 phase B'),
            ('TotVArhExpQ3phC', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Exported Q3 phase C'),
            ('TotVArhExpQ4', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Exported Q4'),
            ('TotVArhExpQ4phA', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Exported Q4 Imported phase A'),
            ('TotVArhExpQ4phB', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Exported Q4 Imported phase B'),
            ('TotVArhExpQ4phC', 'float32', 2, 'varh', '', 'R', 'Total VAr-hours Exported Q4 Imported phase C'),
            ('Evt', 'bitfield32', 2, '', '', 'R', 'Events'),
        ),
    ),
    701: (
        'DERMeasureAC', 'DER AC Measurement',
        (
            ('ACType', 'enum16', 1, '', '', 'R', 'AC Wiring Type'),
            ('St', 'enum16', 1, '', '', 'R', 'Operating State'),
            ('InvSt', 'enum16', 1, '', '', 'R', 'Inverter State'),
            ('ConnSt', 'enum16', 1, '', '', 'R', 'Grid Connection State'),
            ('Alrm', 'bitfield32', 2, '', '', 'R', 'Alarm Bitfield'),
            ('DERMode', 'bitfield32', 2, '', '', 'R', 'DER Operational Characteristics'),
            ('W', 'int16', 1, 'W', 'W_SF', 'R', 'Active Power'),
            ('VA', 'int16', 1, 'VA', 'VA_SF', 'R', 'Apparent Power'),
            ('Var', 'int16', 1, 'Var', 'Var_SF', 'R', 'Reactive Power'),
            ('PF', 'int16', 1, '', 'PF_SF', 'R', 'Power Factor'),
            ('A', 'int16', 1, 'A', 'A_SF', 'R', 'Total AC Current'),
            ('LLV', 'uint16', 1, 'V', 'V_SF', 'R', 'Voltage LL'),
            ('LNV', 'uint16', 1, 'V', 'V_SF', 'R', 'Voltage LN'),
            ('Hz', 'uint32', 2, 'Hz', 'Hz_SF', 'R', 'Frequency'),
            ('TotWhInj', 'uint64', 4, 'Wh', 'TotWh_SF', 'R', 'Total Energy Injected'),
            ('TotWhAbs', 'uint64', 4, 'Wh', 'TotWh_SF', 'R', 'Total Energy Absorbed'),
            ('TotVarhInj', 'uint64', 4, 'Varh', 'TotVarh_SF', 'R', 'Total Reactive Energy Inj'),
            ('TotVarhAbs', 'uint64', 4, 'Varh', 'TotVarh_SF', 'R', 'Total Reactive Energy Abs'),
            ('TmpAmb', 'int16', 1, 'C', 'Tmp_SF', 'R', 'Ambient Temperature'),
            ('TmpCab', 'int16', 1, 'C', 'Tmp_SF', 'R', 'Cabinet Temperature'),
            ('TmpSnk', 'int16', 1, 'C', 'Tmp_SF', 'R', 'Heat Sink Temperature'),
            ('TmpTrns', 'int16', 1, 'C', 'Tmp_SF', 'R', 'Transformer Temperature'),
            ('TmpSw', 'int16', 1, 'C', 'Tmp_SF', 'R', 'IGBT/MOSFET Temperature'),
            ('TmpOt', 'int16', 1, 'C', 'Tmp_SF', 'R', 'Other Temperature'),
            ('WL1', 'int16', 1, 'W', 'W_SF', 'R', 'Watts L1'),
            ('VAL1', 'int16', 1, 'VA', 'VA_SF', 'R', 'VA L1'),
            ('VarL1', 'int16', 1, 'Var', 'Var_SF', 'R', 'Var L1'),
            ('PFL1', 'int16', 1, '', 'PF_SF', 'R', 'PF L1'),
            ('AL1', 'int16', 1, 'A', 'A_SF', 'R', 'Amps L1'),
            ('VL1L2', 'uint16', 1, 'V', 'V_SF', 'R', 'Phase Voltage L1-L2'),
            ('VL1', 'uint16', 1, 'V', 'V_SF', 'R', 'Phase Voltage L1-N'),
            ('TotWhInjL1', 'uint64', 4, 'Wh', 'TotWh_SF', 'R', 'Total Watt-Hours Inj L1'),
            ('TotWhAbsL1', 'uint64', 4, 'Wh', 'TotWh_SF', 'R', 'Total Watt-Hours Abs L1'),
            ('TotVarhInjL1', 'uint64', 4, 'Varh', 'TotVarh_SF', 'R', 'Total Var-Hours Inj L1'),
            ('TotVarhAbsL1', 'uint64', 4, 'Varh', 'TotVarh_SF', 'R', 'Total Var-Hours Abs L1'),
            ('WL2', 'int16', 1, 'W', 'W_SF', 'R', 'Watts L2'),
            ('VAL2', 'int16', 1, 'VA', 'VA_SF', 'R', 'VA L2'),
            ('VarL2', 'int16', 1, 'Var', 'Var_SF', 'R', 'Var L2'),
            ('PFL2', 'int16', 1, '', 'PF_SF', 'R', 'PF L2'),
            ('AL2', 'int16', 1, 'A', 'A_SF', 'R', 'Amps L2'),
            ('VL2L3', 'uint16', 1, 'V', 'V_SF', 'R', 'Phase Voltage L2-L3'),
            ('VL2', 'uint16', 1, 'V', 'V_SF', 'R', 'Phase Voltage L2-N'),
            ('TotWhInjL2', 'uint64', 4, 'Wh', 'TotWh_SF', 'R', 'Total Watt-Hours Inj L2'),
            ('TotWhAbsL2', 'uint64', 4, 'Wh', 'TotWh_SF', 'R', 'Total Watt-Hours Abs L2'),
            ('TotVarhInjL2', 'uint64', 4, 'Varh', 'TotVarh_SF', 'R', 'Total Var-Hours Inj L2'),
            ('TotVarhAbsL2', 'uint64', 4, 'Varh', 'TotVarh_SF', 'R', 'Total Var-Hours Abs L2'),
            ('WL3', 'int16', 1, 'W', 'W_SF', 'R', 'Watts L3'),
            ('VAL3', 'int16', 1, 'VA', 'VA_SF', 'R', 'VA L3'),
            ('VarL3', 'int16', 1, 'Var', 'Var_SF', 'R', 'Var L3'),
            ('PFL3', 'int16', 1, '', 'PF_SF', 'R', 'PF L3'),
            ('AL3', 'int16', 1, 'A', 'A_SF', 'R', 'Amps L3'),
            ('VL3L1', 'uint16', 1, 'V', 'V_SF', 'R', 'Phase Voltage L3-L1'),
            ('VL3', 'uint16', 1, 'V', 'V_SF', 'R', 'Phase Voltage L3-N'),
            ('TotWhInjL3', 'uint64', 4, 'Wh', 'TotWh_SF', 'R', 'Total Watt-Hours Inj L3'),
            ('TotWhAbsL3', 'uint64', 4, 'Wh', 'TotWh_SF', 'R', 'Total Watt-Hours Abs L3'),
            ('TotVarhInjL3', 'uint64', 4, 'Varh', 'TotVarh_SF', 'R', 'Total Var-Hours Inj L3'),
            ('TotVarhAbsL3', 'uint64', 4, 'Varh', 'TotVarh_SF', 'R', 'Total Var-Hours Abs L3'),
            ('ThrotPct', 'uint16', 1, 'Pct', '', 'R', 'Throttling In Pct'),
            ('ThrotSrc', 'bitfield32', 2, '', '', 'R', 'Throttle Source Information'),
            ('A_SF', 'sunssf', 1, '', '', 'R', 'Current Scale Factor'),
            ('V_SF', 'sunssf', 1, '', '', 'R', 'Voltage Scale Factor'),
            ('Hz_SF', 'sunssf', 1, '', '', 'R', 'Frequency Scale Factor'),
            ('W_SF', 'sunssf', 1, '', '', 'R', 'Active Power Scale Factor'),
            ('PF_SF', 'sunssf', 1, '', '', 'R', 'Power Factor Scale Factor'),
            ('VA_SF', 'sunssf', 1, '', '', 'R', 'Apparent Power Scale Factor'),
            ('Var_SF', 'sunssf', 1, '', '', 'R', 'Reactive Power Scale Factor'),
            ('TotWh_SF', 'sunssf', 1, '', '', 'R', 'Active Energy Scale Factor'),
            ('TotVarh_SF', 'sunssf', 1, '', '', 'R', 'Reactive Energy Scale Factor'),
            ('Tmp_SF', 'sunssf', 1, '', '', 'R', 'Temperature Scale Factor'),
            ('MnAlrmInfo', 'string', 32, '', '', 'R', 'Manufacturer Alarm Info'),
        ),
    ),
    702: (
        'DERCapacity', 'DER Capacity',
        (
            ('WMaxRtg', 'uint16', 1, 'W', 'W_SF', 'R', 'Active Power Max Rating'),
            ('WOvrExtRtg', 'uint16', 1, 'W', 'W_SF', 'R', 'Active Power (Over-Excited) Rating'),
            ('WOvrExtRtgPF', 'uint16', 1, '', 'PF_SF', 'R', 'Specified Over-Excited PF'),
            ('WUndExtRtg', 'uint16', 1, 'W', 'W_SF', 'R', 'Active Power (Under-Excited) Rating'),
            ('WUndExtRtgPF', 'uint16', 1, '', 'PF_SF', 'R', 'Specified Under-Excited PF'),
            ('VAMaxRtg', 'uint16', 1, 'VA', 'VA_SF', 'R', 'Apparent Power Max Rating'),
            ('VarMaxInjRtg', 'uint16', 1, 'Var', 'Var_SF', 'R', 'Reactive Power Injected Rating'),
            ('VarMaxAbsRtg', 'uint16', 1, 'Var', 'Var_SF', 'R', 'Reactive Power Absorbed Rating'),
            ('WChaRteMaxRtg', 'uint16', 1, 'W', 'W_SF', 'R', 'Charge Rate Max Rating'),
            ('WDisChaRteMaxRtg', 'uint16', 1, 'W', 'W_SF', 'R', 'Discharge Rate Max Rating'),
            ('VAChaRteMaxRtg', 'uint16', 1, 'VA', 'VA_SF', 'R', 'Charge Rate Max VA Rating'),
            ('VADisChaRteMaxRtg', 'uint16', 1, 'VA', 'VA_SF', 'R', 'Discharge Rate Max VA Rating'),
            ('VNomRtg', 'uint16', 1, 'V', 'V_SF', 'R', 'AC Voltage Nominal Rating'),
            ('VMaxRtg', 'uint16', 1, 'V', 'V_SF', 'R', 'AC Voltage Max Rating'),
            ('VMinRtg', 'uint16', 1, 'V', 'V_SF', 'R', 'AC Voltage Min Rating'),
            ('AMaxRtg', 'uint16', 1, 'A', 'A_SF', 'R', 'AC Current Max Rating'),
            ('PFOvrExtRtg', 'uint16', 1, '', 'PF_SF', 'R', 'PF Over-Excited Rating (Unused)'),
            ('PFUndExtRtg', 'uint16', 1, '', 'PF_SF', 'R', 'PF Under-Excited Rating (Unused)'),
            ('ReactSusceptRtg', 'uint16', 1, 'S', 'S_SF', 'R', 'Reactive Susceptance'),
            ('NorOpCatRtg', 'enum16', 1, '', '', 'R', 'Normal Operating Category'),
            ('AbnOpCatRtg', 'enum16', 1, '', '', 'R', 'Abnormal Operating Category'),
            ('CtrlModes', 'bitfield32', 2, '', '', 'R', 'Supported Control Modes'),
            ('IntIslandCatRtg', 'bitfield16', 1, '', '', 'R', 'Intentional Island Categories'),
            ('WMax', 'uint16', 1, 'W', 'W_SF', 'RW', 'Active Power Max Setting'),
            ('WMaxOvrExt', 'uint16', 1, 'W', 'W_SF', 'RW', 'Active Power (Over-Excited) Setting'),
            ('WOvrExtPF', 'uint16', 1, '', 'PF_SF', 'RW', 'Specified Over-Excited PF'),
            ('WMaxUndExt', 'uint16', 1, 'W', 'W_SF', 'RW', 'Active Power (Under-Excited) Setting'),
            ('WUndExtPF', 'uint16', 1, '', 'PF_SF', 'RW', 'Specified Under-Excited PF'),
            ('VAMax', 'uint16', 1, 'VA', 'VA_SF', 'RW', 'Apparent Power Max Setting'),
            ('VarMaxInj', 'uint16', 1, 'Var', 'Var_SF', 'RW', 'Reactive Power Injected Setting'),
            ('VarMaxAbs', 'uint16', 1, 'Var', 'Var_SF', 'RW', 'Reactive Power Absorbed Setting'),
            ('WChaRteMax', 'uint16', 1, 'W', 'W_SF', 'RW', 'Charge Rate Max Setting'),
            ('WDisChaRteMax', 'uint16', 1, 'W', 'W_SF', 'RW', 'Discharge Rate Max Setting'),
            ('VAChaRteMax', 'uint16', 1, 'VA', 'VA_SF', 'RW', 'Charge Rate Max VA Setting'),
            ('VADisChaRteMax', 'uint16', 1, 'VA', 'VA_SF', 'RW', 'Discharge Rate Max VA Setting'),
            ('VNom', 'uint16', 1, 'V', 'V_SF', 'RW', 'Nominal AC Voltage Setting'),
            ('VMax', 'uint16', 1, 'V', 'V_SF', 'RW', 'AC Voltage Max Setting'),
            ('VMin', 'uint16', 1, 'V', 'V_SF', 'RW', 'AC Voltage Min Setting'),
            ('AMax', 'uint16', 1, 'A', 'A_SF', 'RW', 'AC Current Max Setting'),
            ('PFOvrExt', 'uint16', 1, '', 'PF_SF', 'RW', 'PF Over-Excited Setting (Unused)'),
            ('PFUndExt', 'uint16', 1, '', 'PF_SF', 'RW', 'PF Under-Excited Setting (Unused)'),
            ('IntIslandCat', 'bitfield16', 1, '', '', 'RW', 'Intentional Island Categories'),
            ('W_SF', 'sunssf', 1, '', '', 'R', 'Active Power Scale Factor'),
            ('PF_SF', 'sunssf', 1, '', '', 'R', 'Power Factor Scale Factor'),
            ('VA_SF', 'sunssf', 1, '', '', 'R', 'Apparent Power Scale Factor'),
            ('Var_SF', 'sunssf', 1, '', '', 'R', 'Reactive Power Scale Factor'),
            ('V_SF', 'sunssf', 1, '', '', 'R', 'Voltage Scale Factor'),
            ('A_SF', 'sunssf', 1, '', '', 'R', 'Current Scale Factor'),
            ('S_SF', 'sunssf', 1, '', '', 'R', 'Susceptance Scale Factor'),
        ),
    ),
    704: (
        'DERCtlAC', 'DER AC Controls',
        (
            ('PFWInjEna', 'enum16', 1, '', '', 'RW', 'Power Factor Enable (W Inj) Enable'),
            ('PFWInjEnaRvrt', 'enum16', 1, '', '', 'RW', 'Power Factor Reversion Enable (W Inj)'),
            ('PFWInjRvrtTms', 'uint32', 2, 'Secs', '', 'RW', 'PF Reversion Time (W Inj)'),
            ('PFWInjRvrtRem', 'uint32', 2, 'Secs', '', 'R', 'PF Reversion Time Rem (W Inj)'),
            ('PFWAbsEna', 'enum16', 1, '', '', 'RW', 'Power Factor Enable (W Abs) Enable'),
            ('PFWAbsEnaRvrt', 'enum16', 1, '', '', 'RW', 'Power Factor Reversion Enable (W Abs)'),
            ('PFWAbsRvrtTms', 'uint32', 2, 'Secs', '', 'RW', 'PF Reversion Time (W Abs)'),
            ('PFWAbsRvrtRem', 'uint32', 2, 'Secs', '', 'R', 'PF Reversion Time Rem (W Abs)'),
            ('WMaxLimPctEna', 'enum16', 1, '', '', 'RW', 'Limit Max Power Pct Enable'),
            ('WMaxLimPct', 'uint16', 1, 'Pct', 'WMaxLimPct_SF', 'RW', 'Limit Max Power Pct Setpoint'),
            ('WMaxLimPctRvrt', 'uint16', 1, 'Pct', 'WMaxLimPct_SF', 'RW', 'Reversion Limit Max Power Pct'),
            ('WMaxLimPctEnaRvrt', 'enum16', 1, '', '', 'RW', 'Reversion Limit Max Power Pct Enable'),
            ('WMaxLimPctRvrtTms', 'uint32', 2, 'Secs', '', 'RW', 'Limit Max Power Pct Reversion Time'),
            ('WMaxLimPctRvrtRem', 'uint32', 2, 'Secs', '', 'R', 'Limit Max Power Pct Rev Time Rem'),
            ('WSetEna', 'enum16', 1, '', '', 'RW', 'Set Active Power Enable'),
            ('WSetMod', 'enum16', 1, '', '', 'RW', 'Set Active Power Mode'),
            ('WSet', 'int32', 2, 'W', 'WSet_SF', 'RW', 'Active Power Setpoint (W)'),
            ('WSetRvrt', 'int32', 2, 'W', 'WSet_SF', 'RW', 'Reversion Active Power (W)'),
            ('WSetPct', 'int16', 1, 'Pct', 'WSetPct_SF', 'RW', 'Active Power Setpoint (Pct)'),
            ('WSetPctRvrt', 'int16', 1, 'Pct', 'WSetPct_SF', 'RW', 'Reversion Active Power (Pct)'),
            ('WSetEnaRvrt', 'enum16', 1, '', '', 'RW', 'Reversion Active Power Enable'),
            ('WSetRvrtTms', 'uint32', 2, 'Secs', '', 'RW', 'Active Power Reversion Time'),
            ('WSetRvrtRem', 'uint32', 2, 'Secs', '', 'R', 'Active Power Rev Time Rem'),
            ('VarSetEna', 'enum16', 1, '', '', 'RW', 'Set Reactive Power Enable'),
            ('VarSetMod', 'enum16', 1, '', '', 'RW', 'Set Reactive Power Mode'),
            ('VarSetPri', 'enum16', 1, '', '', 'RW', 'Reactive Power Priority'),
            ('VarSet', 'int32', 2, 'Var', 'VarSet_SF', 'RW', 'Reactive Power Setpoint (Vars)'),
            ('VarSetRvrt', 'int32', 2, 'Var', 'VarSet_SF', 'RW', 'Reversion Reactive Power (Vars)'),
            ('VarSetPct', 'int16', 1, 'Pct', 'VarSetPct_SF', 'RW', 'Reactive Power Setpoint (Pct)'),
            ('VarSetPctRvrt', 'int16', 1, 'Pct', 'VarSetPct_SF', 'RW', 'Reversion Reactive Power (Pct)'),
            ('VarSetEnaRvrt', 'enum16', 1, '', '', 'RW', 'Reversion Reactive Power Enable'),
            ('VarSetRvrtTms', 'uint32', 2, 'Secs', '', 'RW', 'Reactive Power Reversion Time'),
            ('VarSetRvrtRem', 'uint32', 2, 'Secs', '', 'R', 'Reactive Power Rev Time Rem'),
            ('WRmp', 'uint16', 1, '%Max/Sec', '', 'RW', 'Normal Ramp Rate'),
            ('WRmpRef', 'enum16', 1, '', '', 'RW', 'Normal Ramp Rate Reference'),
            ('VarRmp', 'uint16', 1, '%Max/Sec', '', 'RW', 'Reactive Power Ramp Rate'),
            ('AntiIslEna', 'enum16', 1, '', '', 'RW', 'Anti-Islanding Enable'),
            ('PF_SF', 'sunssf', 1, '', '', 'R', 'Power Factor Scale Factor'),
            ('WMaxLimPct_SF', 'sunssf', 1, '', '', 'R', 'Limit Max Power Scale Factor'),
            ('WSet_SF', 'sunssf', 1, '', '', 'R', 'Active Power Scale Factor'),
            ('WSetPct_SF', 'sunssf', 1, '', '', 'R', 'Active Power Pct Scale Factor'),
            ('VarSet_SF', 'sunssf', 1, '', '', 'R', 'Reactive Power Scale Factor'),
            ('VarSetPct_SF', 'sunssf', 1, '', '', 'R', 'Reactive Power Pct Scale Factor'),
            ('PFWInj.PF', 'uint16', 1, '', 'PF_SF', 'RW', 'Power Factor (W Inj) '),
            ('PFWInj.Ext', 'enum16', 1, '', '', 'RW', 'Power Factor Excitation (W Inj)'),
            ('PFWInjRvrt.PF', 'uint16', 1, '', 'PF_SF', 'RW', 'Reversion Power Factor (W Inj) '),
            ('PFWInjRvrt.Ext', 'enum16', 1, '', '', 'RW', 'Reversion PF Excitation (W Inj)'),
            ('PFWAbs.PF', 'uint16', 1, '', 'PF_SF', 'RW', 'Power Factor (W Abs) '),
            ('PFWAbs.Ext', 'enum16', 1, '', '', 'RW', 'Power Factor Excitation (W Abs)'),
            ('PFWAbsRvrt.PF', 'uint16', 1, '', 'PF_SF', 'RW', 'Reversion Power Factor (W Abs) '),
            ('PFWAbsRvrt.Ext', 'enum16', 1, '', '', 'RW', 'Reversion PF Excitation (W Abs)'),
        ),
    ),
    713: (
        'DERStorageCapacity', 'DER Storage Capacity',
        (
            ('WHRtg', 'uint16', 1, 'WH', 'WH_SF', 'R', 'Energy Rating'),
            ('WHAvail', 'uint16', 1, 'WH', 'WH_SF', 'R', 'Energy Available'),
            ('SoC', 'uint16', 1, 'Pct', 'Pct_SF', 'R', 'State of Charge'),
            ('SoH', 'uint16', 1, 'Pct', 'Pct_SF', 'R', 'State of Health'),
            ('Sta', 'enum16', 1, '', '', 'R', 'Status'),
            ('WH_SF', 'sunssf', 1, '', '', 'R', 'Energy Scale Factor'),
            ('Pct_SF', 'sunssf', 1, '', '', 'R', 'Percent Scale Factor'),
        ),
    ),
}

# Our own models, in the SunSpec vendor range (64000-65535), for what SunSpec lacks.
# Sign: + charge / import (the project convention). Floats are IEEE 754 float32, high word first.
CHARGER_MODEL_ID = 64900
METER_TIMING_MODEL_ID = 64901
FAULT_BITS = ("contactor_welded", "over_temperature", "tamper", "bms_fault")  # bit 0, 1, 2, 3
INVERTER_STATES = ("idle", "charging", "discharging", "safe_mode", "fault")  # St values 0..4
CONTACTOR_STATES = ("open", "closed", "welded")  # Ctr values 0..2
CLEAR_CLEARED, CLEAR_NOTHING, CLEAR_REFUSED = 0, 1, 2
# contactor commands (CtrCmd) and their results (CtrRslt)
CTR_CMD_NONE, CTR_CMD_OPEN, CTR_CMD_EMERGENCY_OPEN, CTR_CMD_CLOSE = 0, 1, 2, 3
CTR_DONE, CTR_NOTHING, CTR_DONE_UNDER_LOAD, CTR_REFUSED_UNDER_LOAD, CTR_REFUSED_WELDED = 0, 1, 2, 3, 4

_VENDOR: dict[int, tuple[str, str, tuple[tuple[str, str, int, str, str, str, str], ...]]] = {
    CHARGER_MODEL_ID: ("meshagent_charger", "meshagent charger: power stage, contactor, thermal, tamper, vehicle link", (
        ("Age", "uint32", 2, "ms", "", "R", "Age of this block's sample when read (stale detection)"),
        ("St", "enum16", 1, "", "", "R", "Inverter state: 0 idle, 1 charging, 2 discharging, 3 safe_mode, 4 fault"),
        ("SafeMode", "enum16", 1, "", "", "RW", "Safe mode: write 1 to enter (power to 0, setpoints refused), 0 to leave"),
        ("ClrReq", "uint16", 1, "", "", "RW", "Clear latched faults: write a new nonzero sequence number"),
        ("ClrAck", "uint16", 1, "", "", "R", "Sequence number of the last clear request processed"),
        ("ClrRslt", "enum16", 1, "", "", "R", "Result of that request: 0 cleared, 1 nothing to clear, 2 refused (cause present)"),
        ("Pad", "pad", 1, "", "", "R", ""),
        ("Flt", "bitfield32", 2, "", "", "R", "Latched faults: bit 0 contactor_welded, 1 over_temperature, 2 tamper, 3 bms_fault"),
        ("FltCause", "bitfield32", 2, "", "", "R", "Causes present now (same bits); clearing is refused while one is set"),
        ("Ctr", "enum16", 1, "", "", "R", "Contactor: 0 open, 1 closed, 2 welded"),
        ("CtrHold", "enum16", 1, "", "", "R", "1 if an open command holds the contactors open (power 0) until a close command"),
        ("CtrCyc", "uint32", 2, "", "", "R", "Contactor close cycles so far"),
        ("CtrBudget", "uint32", 2, "", "", "R", "Rated contactor cycles (wear budget)"),
        ("WSetAct", "float32", 2, "W", "", "R", "Setpoint in force after limits, + charge / - discharge"),
        ("W", "float32", 2, "W", "", "R", "Active power at the AC terminals, + charge / - discharge"),
        ("WMaxCha", "float32", 2, "W", "", "R", "Charge limit now (charger rating and vehicle)"),
        ("WMaxDis", "float32", 2, "W", "", "R", "Discharge limit now, magnitude (charger rating and vehicle)"),
        ("WRmp", "float32", 2, "W/s", "", "R", "Ramp rate of the power stage"),
        ("Tmp", "float32", 2, "C", "", "R", "Power stage temperature (thermal sensor)"),
        ("Tmpr", "enum16", 1, "", "", "R", "Tamper switch: 0 enclosure closed, 1 open"),
        ("TmprLatch", "enum16", 1, "", "", "R", "1 if opened since the last clear"),
        ("EVConn", "enum16", 1, "", "", "R", "Vehicle connected: 0 no, 1 yes"),
        ("BMSSt", "uint16", 1, "", "", "R", "BMS status: 0 normal, 1 upper limit, 2 over temperature, 3 Battery_Lower_Limit, 4 fault"),
        ("EVMaxChaW", "float32", 2, "W", "", "R", "ISO 15118-20 EVMaximumChargePower"),
        ("EVMaxDisW", "float32", 2, "W", "", "R", "ISO 15118-20 EVMaximumDischargePower (magnitude)"),
        ("EVMinDisW", "float32", 2, "W", "", "R", "ISO 15118-20 EVMinimumDischargePower (magnitude)"),
        ("SoC", "float32", 2, "Pct", "", "R", "ISO 15118-20 PresentSOC"),
        ("MinSoC", "float32", 2, "Pct", "", "R", "ISO 15118-20 MinimumSOC"),
        ("TgtSoC", "float32", 2, "Pct", "", "R", "ISO 15118-20 TargetSOC"),
        ("BatWh", "float32", 2, "Wh", "", "R", "ISO 15118-20 BatteryEnergyCapacity"),
        ("EVId", "string", 16, "", "", "R", "Vehicle id (EVCCID or emulator model), ASCII, NUL padded"),
        ("CtrCmd", "enum16", 1, "", "", "RW", "Contactor command: 1 open at zero current, 2 emergency open (now, under load), "
         "3 close (release the hold); carried out when CtrReq is written"),
        ("CtrReq", "uint16", 1, "", "", "RW", "Contactor command request: write a new nonzero sequence number (with CtrCmd, "
         "in one write)"),
        ("CtrAck", "uint16", 1, "", "", "R", "Sequence number of the last contactor command processed"),
        ("CtrRslt", "enum16", 1, "", "", "R", "Its result: 0 done, 1 nothing to do, 2 opened under load (heavy wear), "
         "3 refused: current flowing, 4 refused: contacts welded"),
        ("CtrBrkW", "float32", 2, "W", "", "R", "AC power at that command: broken by an opening under load, "
         "or flowing when refused; + charge / - discharge"),
        ("EVFwCap", "enum16", 1, "", "", "R", "1 if the vehicle's firmware caps discharge at 50 % of its charge "
         "power (early bidirectional firmware), else 0"),
        ("MaxDisA", "float32", 2, "A", "", "R", "The charger's MAX_DISCHARGE_AMPS setting (EVMaximumDischargePower "
         "<= A x EVNomV); NaN: no setting"),
        ("EVDisSpecW", "float32", 2, "W", "", "R", "The vehicle's own discharge power, before those caps"),
        ("EVChaSpecW", "float32", 2, "W", "", "R", "The vehicle's own charge power (the old-firmware cap is half)"),
        ("EVNomV", "float32", 2, "V", "", "R", "Battery nominal DC voltage"),
    )),
    METER_TIMING_MODEL_ID: ("meshagent_meter_timing", "meshagent meter sample timing", (
        ("Age", "uint32", 2, "ms", "", "R", "Age of the meter sample when read (stale detection)"),
        ("Seq", "uint32", 2, "", "", "R", "Meter sample counter (wraps)"),
    )),
}

MODELS: dict[int, Model] = {
    **{mid: _model(mid, name, label, rows, SUNSPEC_SOURCE.format(id=mid)) for mid, (name, label, rows) in _SUNSPEC.items()},
    **{mid: _model(mid, name, label, rows, "meshagent (this file)") for mid, (name, label, rows) in _VENDOR.items()},
}


# --- codec -----------------------------------------------------------------------------------


def encode(point: Point, value: object, sf: int = 0) -> list[int]:
    """Registers for ``value`` (a scaled number, str for strings; ``None`` = not implemented)."""
    t = point.type
    if t == "string":
        raw = (str(value) if value is not None else "").encode("ascii", "replace")[: point.size * 2]
        raw = raw.ljust(point.size * 2, b"\0")
        return list(struct.unpack(f">{point.size}H", raw))
    if t == "pad":
        return [0x8000]
    if t == "float32":
        f = math.nan if value is None else float(value)  # type: ignore[arg-type]
        return list(struct.unpack(">HH", struct.pack(">f", f)))
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        n = NOT_IMPLEMENTED[t]  # an integer register cannot say NaN: "not implemented" it is
    else:
        n = round(float(value) / (10.0 ** sf)) if t not in ("enum16", "bitfield16", "bitfield32", "enum32", "sunssf") else int(value)  # type: ignore[arg-type,call-overload]
        bits = point.size * 16
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if t.startswith("int") or t == "sunssf" else (0, (1 << bits) - 1)
        if not lo <= n <= hi:
            raise RegisterError(f"{point.name}: {value} does not fit {t} with scale factor {sf}")
        n &= (1 << bits) - 1
    return [(n >> (16 * (point.size - 1 - i))) & 0xFFFF for i in range(point.size)]


def decode(point: Point, regs: Sequence[int], sf: int = 0) -> float | int | str | None:
    """Value of ``point`` from its registers; ``None`` for SunSpec's not-implemented."""
    if len(regs) != point.size or any(not 0 <= r <= 0xFFFF for r in regs):
        raise RegisterError(f"{point.name}: expected {point.size} registers")
    t = point.type
    if t == "string":
        raw = struct.pack(f">{point.size}H", *regs).rstrip(b"\0")
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise RegisterError(f"{point.name}: not ASCII") from None
    if t == "float32":
        f = struct.unpack(">f", struct.pack(">HH", *regs))[0]
        return None if math.isnan(f) else f  # NaN is SunSpec's "not implemented" for floats
    n = 0
    for r in regs:
        n = (n << 16) | r
    if t in NOT_IMPLEMENTED and n == NOT_IMPLEMENTED[t]:
        return None
    if t.startswith("int") or t == "sunssf":
        bits = point.size * 16
        if n >= 1 << (bits - 1):
            n -= 1 << bits
    if t in ("enum16", "enum32", "bitfield16", "bitfield32", "sunssf", "pad"):
        return n
    if not sf:
        return n
    # round to the register's resolution: 60020 with sf -3 is 60.02, never 60.019999999999996
    return round(n * 10.0 ** sf, -sf) if sf < 0 else n * 10 ** sf


# --- layouts ---------------------------------------------------------------------------------


@attrs.frozen
class UnitLayout:
    """Models placed from ``base``: ``SunS``, each model, then the end marker."""

    name: str
    model_ids: tuple[int, ...]
    base: int = SUNSPEC_BASE

    def starts(self) -> dict[int, int]:
        out, addr = {}, self.base + 2
        for mid in self.model_ids:
            out[mid] = addr
            addr += MODELS[mid].length + 2
        return out

    @property
    def end(self) -> int:
        """Address of the end marker."""
        return self.base + 2 + sum(MODELS[m].length + 2 for m in self.model_ids)

    @property
    def size(self) -> int:
        return self.end + 2 - self.base

    def address(self, model_id: int, point: str) -> int:
        return self.starts()[model_id] + MODELS[model_id].point(point).offset


METER_LAYOUT = UnitLayout("site meter", (1, METER_TIMING_MODEL_ID, 213))
CHARGER_LAYOUT = UnitLayout("charger", (1, 701, 702, 704, 713, CHARGER_MODEL_ID))
# A charger that implements only the SunSpec Alliance's standard models (no 64900).
STANDARD_CHARGER_LAYOUT = UnitLayout("standard SunSpec charger", (1, 701, 702, 704, 713))
STANDARD_MODEL_IDS = (1, 701, 702, 704, 713)


def register_map_markdown() -> str:
    """``docs/register-map.md``: every register of both units."""
    out = [
        "# Register map",
        "",
        "Generated from `hardware/modbus/registers.py` (the data the drivers and servers use);",
        "do not edit by hand. Holding registers, function codes 3 (read) and 16 (write), addresses",
        "0-based as on the wire. SunSpec models follow the SunSpec Alliance definitions",
        "(github.com/sunspec/models @ 7abdf89); models 64900 and 64901 are ours.",
        "",
        "Sign convention: SunSpec DER models (701 `W`, 704 `WSet`) count discharge (generation) as",
        "positive; the meter model 213 counts import as positive; our models 64900 and 64901 use",
        "the project convention (+ charge / import, - discharge / export). The drivers translate.",
        "",
        "Not-implemented values are SunSpec's: 0x8000 (int16, sunssf), 0xFFFF (uint16, enum16),",
        "0x80000000 (int32), 0xFFFFFFFF (uint32, bitfield32), NaN (float32).",
        "",
        "What the drivers use: meter `read` = one read of 64901 `Age` through 213 `W`;",
        "inverter `set_power` = write of 704 `WSet` (int32, `WSet_SF`, sign flipped);",
        "status/thermal/tamper/vehicle = one read of 64900; safe mode = write `SafeMode`;",
        "clear faults = write `ClrReq`, read back `ClrAck`/`ClrRslt`;",
        "contactor commands = one write of `CtrCmd` and `CtrReq`, read back `Ctr` to `CtrBrkW`.",
    ]
    for layout in (METER_LAYOUT, CHARGER_LAYOUT):
        out += ["", f"## {layout.name} unit", "",
                f"`{layout.base}`-`{layout.base + 1}`: `SunS` marker (0x5375 0x6E53). "
                f"End marker (0xFFFF, 0) at `{layout.end}`.", ""]
        for mid, start in layout.starts().items():
            m = MODELS[mid]
            out += [f"### Model {mid}: {m.label} (`{m.name}`, L = {m.length})", "", f"Source: {m.source}", "",
                    "| address | offset | point | type | regs | units | scale factor | access | description |",
                    "|---|---|---|---|---|---|---|---|---|"]
            for p in m.points:
                out.append(f"| {start + p.offset} | {p.offset} | `{p.name}` | {p.type} | {p.size} | {p.units} | "
                           f"{p.sf} | {p.access} | {p.label} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":  # python -m hardware.modbus.registers > docs/register-map.md
    print(register_map_markdown(), end="")
