-- Backups of the store (issue 20): the store's own record of each backup.
--
-- The catalogue in the backup location (`_catalog/<id>.json` beside the backup's
-- files) is the source of truth: a store restored on a new machine finds its
-- backups there. This table mirrors it so that `cdrhouse backup status` and the
-- Prometheus metric (age of the last good backup) need no round trip to S3.
--
-- state:
--   completed      ClickHouse finished the backup and its manifest is written
--   verified       restored into a scratch database and equal, table by table and
--                  partition by partition, to what was backed up
--   verify_failed  a verification found it (or a backup it builds on) missing,
--                  incomplete or different; `error` says what
--   deleted        removed by retention

CREATE TABLE IF NOT EXISTS backups
(
    backup_id    String,
    kind         LowCardinality(String),
    base_id      String,
    location     String,
    started_at   DateTime64(3, 'UTC'),
    finished_at  DateTime64(3, 'UTC'),
    size_bytes   UInt64,
    rows         UInt64,
    tables       UInt32,
    state        LowCardinality(String),
    verified_at  Nullable(DateTime64(3, 'UTC')),
    error        String,
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY backup_id;
