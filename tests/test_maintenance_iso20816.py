"""ISO 20816-3 zone boundaries, per-asset overrides and hysteresis."""

import pytest
from pydantic import ValidationError

from maintenance.iso20816 import DEFAULTS, ZoneConfig, ZoneTracker, zone


@pytest.mark.parametrize(("group", "foundation", "expected"), [
    (1, "rigid", (2.3, 4.5, 7.1)), (1, "flexible", (3.5, 7.1, 11.0)),
    (2, "rigid", (1.4, 2.8, 4.5)), (2, "flexible", (2.3, 4.5, 7.1)),
])
def test_default_boundaries(group, foundation, expected):
    cfg = ZoneConfig(group=group, foundation=foundation)
    assert cfg.boundaries == expected == DEFAULTS[(group, foundation)]


@pytest.mark.parametrize(("v", "z"), [(0.0, "A"), (1.39, "A"), (1.4, "B"), (2.79, "B"), (2.8, "C"),
                                      (4.49, "C"), (4.5, "D"), (50.0, "D")])
def test_zone_edges_group2_rigid(v, z):
    assert zone(v, ZoneConfig(group=2, foundation="rigid").boundaries) == z


def test_override_and_validation():
    cfg = ZoneConfig(boundaries_mm_s=(1.0, 2.0, 3.0))
    assert zone(2.5, cfg.boundaries) == "C"
    with pytest.raises(ValidationError, match="increasing"):
        ZoneConfig(boundaries_mm_s=(2.0, 1.0, 3.0))
    with pytest.raises(ValidationError):
        ZoneConfig(group=3)


def test_hysteresis_on_the_way_down():
    tr = ZoneTracker(ZoneConfig(group=2, foundation="rigid", hysteresis=0.05))
    assert tr.update(1.0) == "A"
    assert tr.update(2.9) == "C"
    assert tr.update(2.75) is None  # below 2.8 but within 5 %: still C
    assert tr.update(2.81) is None
    assert tr.update(2.6) == "B"  # clearly below
    assert tr.update(5.0) == "D"
    assert tr.update(1.0) == "A"  # a big drop goes straight down
