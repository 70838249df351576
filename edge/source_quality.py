"""A device's own statement of a value's quality, as `edge.records.Quality`.

Devices state quality in one of a few conventions, and the same number means opposite things in two of them:
an OPC UA StatusCode is Good at 0 (its two top bits are the severity), an OPC DA / Sparkplug / Ignition quality code
is Good at 192 (bits 0xC0) and Bad at 0. So a number is read only in the convention configured for it, never guessed.
No I/O and no protocol library: the OPC UA collector, Sparkplug and JSON decoders all use these.
"""

from __future__ import annotations

from edge.records import Quality

_SEVERITY_MASK = 0xC000_0000
_OPCUA_UNCERTAIN = 0x4000_0000


def from_opcua_status(code: int) -> Quality:
    """Quality from the severity bits of an OPC UA StatusCode (Part 4 §7.39; 11 is reserved: treated as Bad)."""
    severity = code & _SEVERITY_MASK
    if severity == 0:
        return Quality.GOOD
    if severity == _OPCUA_UNCERTAIN:
        return Quality.UNCERTAIN
    return Quality.BAD


def from_opcda_quality(code: int) -> Quality:
    """Quality from an OPC DA quality code (QQSSSSLL: 0xC0 good, 0x40 uncertain, 0x00 bad), as Sparkplug's
    ``Quality`` property and Ignition carry it (192 good). A code beyond one byte is no DA quality: Bad."""
    if 0 <= code <= 255 and code & 0xC0 == 0xC0:
        return Quality.GOOD
    return Quality.UNCERTAIN if 0 <= code <= 255 and code & 0xC0 == 0x40 else Quality.BAD


def from_text(text: str) -> Quality | None:
    """Quality from a word that starts with good / uncertain / bad, any case ("Good", "BAD_COMM_FAILURE",
    "UncertainLastUsableValue", OPC UA's symbolic StatusCode names); None for any other text."""
    low = text.lower()
    for prefix, quality in (("good", Quality.GOOD), ("uncertain", Quality.UNCERTAIN), ("bad", Quality.BAD)):
        if low.startswith(prefix):
            return quality
    return None
