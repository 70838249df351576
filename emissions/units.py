"""Physical constants and unit conversions used by the normalisation (no I/O, vectorised).

Standard conditions are those of the IED: 273.15 K and 101.325 kPa (the directive writes 101.3 kPa);
the molar volume of an ideal gas there is 22.414 L/mol.
"""

from __future__ import annotations

import numpy as np

T_STD_K = 273.15
P_STD_KPA = 101.325
MOLAR_VOLUME_L_MOL = 22.414
O2_AIR_PERCENT = 21.0

# g/mol. NOx is reported as NO2, TOC as carbon (permits state the expression; override per pollutant).
MOLAR_MASS: dict[str, float] = {
    "NOx": 46.01, "NO2": 46.01, "NO": 30.01, "SO2": 64.07, "CO": 28.01, "CO2": 44.01, "HCl": 36.46,
    "HF": 20.01, "NH3": 17.03, "N2O": 44.01, "TOC": 12.01, "CH4": 16.04, "Hg": 200.59, "H2S": 34.08,
}

_PRESSURE_TO_KPA = {"kPa": 1.0, "hPa": 0.1, "mbar": 0.1, "Pa": 0.001, "bar": 100.0}
_MASS_TO_MG = {"mg/m3": 1.0, "ug/m3": 1e-3, "g/m3": 1e3}


def ppm_to_mg_nm3(ppm: np.ndarray, molar_mass_g_mol: float) -> np.ndarray:
    """Volume fraction (µmol/mol) to mg per standard m³: ppm × M / Vm."""
    return ppm * (molar_mass_g_mol / MOLAR_VOLUME_L_MOL)


def to_mg_m3(values: np.ndarray, unit: str, molar_mass_g_mol: float | None) -> tuple[np.ndarray, bool]:
    """Analyser values in mg/m³. Returns (values, at_standard): a volume fraction converts straight to
    standard conditions, a mass concentration stays on the analyser's basis."""
    if unit in _MASS_TO_MG:
        return values * _MASS_TO_MG[unit], False
    if molar_mass_g_mol is None:
        raise ValueError(f"unit {unit} needs a molar mass")
    ppm = values * 1e4 if unit == "percent" else values
    return ppm_to_mg_nm3(ppm, molar_mass_g_mol), True


def kelvin(values: np.ndarray, unit: str) -> np.ndarray:
    return values + T_STD_K if unit == "degC" else values


def kpa(values: np.ndarray, unit: str) -> np.ndarray:
    return values * _PRESSURE_TO_KPA[unit]


# What a flue gas's absolute pressure and temperature can be. Outside, a value is not what the configuration says it
# is: a gauge pressure configured as absolute (0.3 kPa made every concentration 338 times larger, reported as limit
# exceedances), hPa configured as kPa, kelvin as degrees Celsius. Such a value is refused (a configured constant) or
# taken as missing (a reading), never converted.
PLAUSIBLE_KPA = (50.0, 150.0)
PLAUSIBLE_K = (223.15, 1773.15)  # -50 to 1500 degrees Celsius


def plausible_kpa(p_kpa: np.ndarray) -> np.ndarray:
    """Where an absolute flue-gas pressure in kPa is within `PLAUSIBLE_KPA`."""
    return (p_kpa >= PLAUSIBLE_KPA[0]) & (p_kpa <= PLAUSIBLE_KPA[1])


def plausible_k(t_k: np.ndarray) -> np.ndarray:
    """Where a flue-gas temperature in kelvin is within `PLAUSIBLE_K`."""
    return (t_k >= PLAUSIBLE_K[0]) & (t_k <= PLAUSIBLE_K[1])


def std_factor(t_k: np.ndarray, p_kpa: np.ndarray) -> np.ndarray:
    """Factor taking a concentration at actual (T, p) to standard conditions: (T / T_std) × (p_std / p)."""
    return (t_k / T_STD_K) * (P_STD_KPA / p_kpa)


def dry_factor(h2o_percent: np.ndarray) -> np.ndarray:
    """Factor taking a wet concentration to dry gas: 1 / (1 − H2O/100)."""
    return 1.0 / (1.0 - h2o_percent / 100.0)


def o2_factor(o2_dry_percent: np.ndarray, o2_ref_percent: float) -> np.ndarray:
    """E_ref = E_meas × (21 − O2_ref) / (21 − O2_meas), O2 on a dry basis."""
    return (O2_AIR_PERCENT - o2_ref_percent) / (O2_AIR_PERCENT - o2_dry_percent)
