"""The simulated plant's tag catalogue: names, units, ranges; OPC UA node ids follow from the names.

Tag names are ``ASSET.signal`` (``P-101.vib_de``, ``K1.NOx``), the convention of the site
configuration. The OPC UA node id of a tag is ``ns=<simulator namespace>;s=<tag>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["float", "int", "bool"]


@dataclass(frozen=True, slots=True)
class TagSpec:
    name: str
    asset: str
    unit: str  # as written in the site configuration ("mm/s", "degC", "m3/h", "mg/m3", "%")
    description: str
    low: float  # engineering range (OPC UA EURange)
    high: float
    kind: Kind = "float"


# UNECE Recommendation 20 codes for OPC UA EngineeringUnits (EUInformation.UnitId). A unit without one (kNm3/h:
# Rec 20 has no thousand cubic metres per hour; it was given MQH, cubic metre per hour, a factor of 1,000 off for a
# client reading UnitId) gets UnitId -1, "not available" (OPC UA Part 8), and only its DisplayName.
UNECE_CODES: dict[str, str] = {
    "mm/s": "C16", "degC": "CEL", "A": "AMP", "m3/h": "MQH", "bar": "BAR", "rpm": "RPM", "%": "P1",
    "kPa": "KPA", "mg/m3": "GP", "t/h": "E18", "MW": "MAW", "1": "C62", "": "C62",
}

PUMP_SIGNALS: list[tuple[str, str, str, float, float, Kind]] = [
    ("vib_de", "mm/s", "drive-end bearing vibration velocity RMS (0-1280 Hz)", 0.0, 50.0, "float"),
    ("vib_de_peak", "mm/s", "drive-end vibration velocity peak (from the waveform)", 0.0, 200.0, "float"),
    ("vib_de_crest", "1", "drive-end vibration crest factor (peak / RMS)", 0.0, 20.0, "float"),
    ("vib_de_kurtosis", "1", "drive-end vibration kurtosis (3 for Gaussian noise)", 0.0, 50.0, "float"),
    ("bearing_temp", "degC", "drive-end bearing temperature", -20.0, 150.0, "float"),
    ("motor_current", "A", "motor current", 0.0, 150.0, "float"),
    ("flow", "m3/h", "pump flow", 0.0, 300.0, "float"),
    ("discharge_pressure", "bar", "discharge pressure (gauge)", 0.0, 16.0, "float"),
    ("speed", "rpm", "shaft speed", 0.0, 1600.0, "float"),
    ("running", "", "pump running", 0.0, 1.0, "bool"),
]

STACK_SIGNALS: list[tuple[str, str, str, float, float, Kind]] = [
    ("NOx", "mg/m3", "NOx as NO2, dry, 273.15 K / 101.325 kPa, measured O2", 0.0, 500.0, "float"),
    ("CO", "mg/m3", "CO, dry, 273.15 K / 101.325 kPa, measured O2", 0.0, 500.0, "float"),
    ("SO2", "mg/m3", "SO2, dry, 273.15 K / 101.325 kPa, measured O2", 0.0, 300.0, "float"),
    ("dust", "mg/m3", "dust, dry, 273.15 K / 101.325 kPa, measured O2", 0.0, 50.0, "float"),
    ("O2", "%", "O2 vol-%, dry (extractive analyser)", 0.0, 21.0, "float"),
    ("CO2", "%", "CO2 vol-%, dry", 0.0, 20.0, "float"),
    ("H2O", "%", "flue gas moisture vol-%", 0.0, 40.0, "float"),
    ("flow", "m3/h", "flue gas flow, wet, actual conditions", 0.0, 400000.0, "float"),
    ("T", "degC", "flue gas temperature", 0.0, 300.0, "float"),
    ("p", "kPa", "flue gas absolute pressure", 80.0, 120.0, "float"),
    ("state", "", "operating state: 0 off, 1 start-up, 2 normal, 3 shut-down", 0.0, 3.0, "int"),
    ("load", "%", "boiler load", 0.0, 110.0, "float"),
    ("fuel", "kNm3/h", "natural gas flow", 0.0, 15.0, "float"),
    ("steam", "t/h", "steam flow", 0.0, 180.0, "float"),
    ("NOx.zero", "mg/m3", "NOx analyser zero check reading (QAL3)", -20.0, 20.0, "float"),
    ("NOx.span", "mg/m3", "NOx analyser span check reading, span gas 80 mg/m3 (QAL3)", 0.0, 200.0, "float"),
]

SITE_SIGNALS: list[tuple[str, str, str, float, float, Kind]] = [
    ("ambient_temp", "degC", "ambient air temperature", -40.0, 40.0, "float"),
]


def catalogue(pumps: list[str], stack: str, site: str = "SITE") -> list[TagSpec]:
    """Every tag of a plant with these pumps and this boiler stack, in a stable order."""
    out: list[TagSpec] = []
    for asset, signals in [(p, PUMP_SIGNALS) for p in pumps] + [(stack, STACK_SIGNALS), (site, SITE_SIGNALS)]:
        for sig, unit, desc, lo, hi, kind in signals:
            out.append(TagSpec(f"{asset}.{sig}", asset, unit, desc, lo, hi, kind))
    return out


SYNTHETIC_PER_FOLDER = 500


def synthetic_tags(n: int) -> list[TagSpec]:
    """``n`` extra float tags (``SYN.00001`` ...) for scale tests and benchmarks.

    They sit in folders of 500 (``SYN-00``, ``SYN-01`` ...): asyncua checks every new reference
    against all of its parent's, so one folder of 10,000 variables takes minutes to build.
    """
    return [TagSpec(f"SYN.{i:05d}", f"SYN-{(i - 1) // SYNTHETIC_PER_FOLDER:02d}", "1", "synthetic signal",
                    -100.0, 100.0) for i in range(1, n + 1)]


def unit_id(code: str | None) -> int:
    """OPC UA EUInformation.UnitId of a UNECE code: its ASCII bytes as a big-endian integer; -1 without a code."""
    if code is None:
        return -1
    out = 0
    for ch in code:
        out = (out << 8) | ord(ch)
    return out
