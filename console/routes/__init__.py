"""HTTP routes of the console, one module per area (API under /api, pages at the top level)."""
