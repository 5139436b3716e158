-- Hot -> warm tiering: which tenant-months sit in the archive, and in what state.
--
-- The archive itself (manifests and the index in the object store) is the source
-- of truth about what is stored; this table is the store's own record of it, so
-- that query planning ("does this range touch archived months?") and maintenance
-- jobs ("refuse to re-rate an archived month") need no round trip to S3.
--
-- state:
--   verified  the tenant's rows of the month are in the archive, checked, and
--             still in the hot table (the partition is dropped only when every
--             tenant of the month is verified)
--   archived  verified, and the hot partition is gone: the archive is the only copy
--   restored  rehydrated into the hot table; the archive copy is kept but the hot
--             table is authoritative again (queries do not read the archive)

CREATE TABLE IF NOT EXISTS warm_months
(
    tenant_id   LowCardinality(String),
    month       UInt32,
    state       LowCardinality(String),
    rows        UInt64,
    bytes       UInt64,
    files       UInt32,
    checksum    String,
    manifest    String,
    updated_at  DateTime64(3, 'UTC'),
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant_id, month);
