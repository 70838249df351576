"""The Industrial Emissions Directive's numbers, as defaults per regime (2010/75/EU Annexes V and VI).

`emissions.config.StackConfig` fills these in before validation where a stack's configuration does not
say otherwise, so each default is written down once, here. Permits differ: every value can be
overridden per stack (see ``emissions/sample.toml``).
"""

from __future__ import annotations

from typing import Any

# IED Annex V Part 3 point 9 (LCP) and Annex VI Part 6 point 1.3 (waste incineration): the 95 %
# confidence interval of a single measured result as a percentage of the emission limit value.
IED_CI_PERCENT: dict[str, float] = {"CO": 10.0, "SO2": 20.0, "NOx": 20.0, "dust": 30.0, "TOC": 30.0,
                                    "HCl": 40.0, "HF": 40.0}
# An average needs this share of valid primary values in its operating time (a common permit figure: 2/3).
DEFAULT_MIN_VALID_SHARE: dict[str, float] = {"ten_min": 2 / 3, "half_hour": 2 / 3, "hour": 2 / 3}

_LCP_RULES = [
    {"name": "lcp_monthly", "period": "month", "elv": "month", "percent": 100.0,
     "reference": "IED Annex V Part 4 1(a): no validated monthly average over the ELV"},
    {"name": "lcp_daily_110", "period": "day", "elv": "month", "percent": 110.0,
     "reference": "IED Annex V Part 4 1(b): no validated daily average over 110 % of the ELV"},
    {"name": "lcp_hourly_95_200", "period": "hour", "elv": "month", "percent": 200.0, "share": 95.0,
     "window": "year",
     "reference": "IED Annex V Part 4 1(d): 95 % of validated hourly averages in a year within 200 % of the ELV"},
]
_WI_RULES = [
    {"name": "wi_daily", "period": "day", "elv": "day", "exclude": ["CO"],
     "reference": "IED Annex VI Part 8 1.1(a): no daily average over the daily ELV (Part 3 1.1)"},
    # 1.1(b) is one criterion with two alternatives: column A, or (where relevant) column B.
    {"name": "wi_half_hour_a", "period": "half_hour", "elv": "half_hour_100", "group": "wi_half_hour",
     "reference": "IED Annex VI Part 8 1.1(b): no half-hourly average over column A"},
    {"name": "wi_half_hour_b", "period": "half_hour", "elv": "half_hour_97", "share": 97.0, "window": "year",
     "group": "wi_half_hour",
     "reference": "IED Annex VI Part 8 1.1(b): or, where relevant, 97 % of half-hourly averages in a year "
                  "within column B"},
    {"name": "wi_co_daily_97", "period": "day", "elv": "day", "share": 97.0, "window": "year", "pollutants": ["CO"],
     "reference": "IED Annex VI Part 8 1.1(d): 97 % of CO daily averages in a year within the ELV"},
    # CO in any 24 h: 95 % of the 10-minute averages, or all of the half-hourly averages, within their ELV
    # (alternatives). The names keep the elv keys half_hour_95 / ten_min_95 that stack configurations use.
    {"name": "wi_co_half_hour_95", "period": "half_hour", "elv": "half_hour_95", "window": "day",
     "pollutants": ["CO"], "group": "wi_co_24h",
     "reference": "IED Annex VI Part 8 1.1(d): all CO half-hourly averages in 24 h within the ELV"},
    {"name": "wi_co_ten_min_95", "period": "ten_min", "elv": "ten_min_95", "share": 95.0, "window": "day",
     "pollutants": ["CO"], "group": "wi_co_24h",
     "reference": "IED Annex VI Part 8 1.1(d): or 95 % of CO 10-minute averages in 24 h within the ELV"},
]

# Defaults that differ between the two regimes; everything else has one default in the models above.
REGIME_DEFAULTS: dict[str, dict[str, Any]] = {
    "lcp": {"regulatory": {"ci_elv": "month", "day_from": "hour", "day_max_invalid": 3},
            "compliance": _LCP_RULES, "ten_min": False},
    "waste_incineration": {"regulatory": {"ci_elv": "day", "day_from": "half_hour", "day_max_invalid": 5},
                           "compliance": _WI_RULES, "ten_min": False},
}
