"""Index the tags by asset, then name in byte order (owner: console/).

The console's asset list counts each asset's tags, and an asset page reads its tags and the condition indicators
maintenance derives from them (``<tag>.<stat>``, registered without an asset). Unindexed, each count read every
tag: at 20,000 assets and 180,000 tags a page of 200 assets took 1.5 s and the whole list over two minutes, and an
asset page read all indicators of the site to find its own. ``COLLATE "C"`` orders names byte by byte whatever the
database's collation, so the indicators of a tag are one range of the index, from ``<tag>.`` to ``<tag>/``
(`console.routes.assets`).
"""

from edge.db.features import Features


def up(cur, features: Features) -> None:
    cur.execute('CREATE INDEX IF NOT EXISTS tags_asset_name ON tags (asset, name COLLATE "C")')
