"""The live anomaly detectors' versions, one row each (owner: maintenance/).

The gateway fits its anomaly detectors itself (self-trained on the first ``train_samples`` of an asset, trained
again by ``valvoja maintenance train-anomaly``, restored from its state file), so no model registry knows what a
version was trained on. The gateway records each version once when it comes into service (through the spool, like
predictions; a replay or a restart restoring the same version adds no row): ``maintenance.trace`` follows an
anomaly alert's ``model_version`` here to the detector's training window.
"""

from edge.db.features import Features


def up(cur, features: Features) -> None:
    cur.execute("""
        CREATE TABLE IF NOT EXISTS anomaly_detector_versions (
            model_id text NOT NULL,
            version text NOT NULL,
            asset text NOT NULL,
            in_service_at timestamptz NOT NULL,
            origin text NOT NULL CHECK (origin IN ('self_trained', 'retrained', 'restored')),
            training_origin text CHECK (training_origin IN ('self_trained', 'retrained')),
            training_start timestamptz,
            training_end timestamptz,
            training_samples integer,
            left_out_flagged integer,
            left_out_incomplete integer,
            signals jsonb NOT NULL,
            alpha double precision NOT NULL,
            calibration_size integer NOT NULL,
            config_sha256 text NOT NULL,
            config jsonb NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (model_id, version)
        )""")
    cur.execute("CREATE INDEX IF NOT EXISTS anomaly_detector_versions_asset ON anomaly_detector_versions "
                "(asset, in_service_at)")
