-- The audit trail (issue 18): who did what, when, from where, and how it ended.
--
-- Append-only: cdrhouse only ever INSERTs here (engine/audit.py); rows leave by the
-- TTL alone. One row per authenticated HTTP request (API and web viewer, recorded by
-- api/audit.py for every route), failed sign-in and sign-out, and per changing CLI
-- command (principal `cli:<os user>`). `params` is a JSON summary of the request with
-- every secret removed (passwords, API keys, tokens): never a secret.
--
-- ORDER BY (tenant, time): every read is one tenant's time range (an operator's own
-- tenant, a customer's own key inside it); `event_id` breaks ties for paging.
-- Retention: 400 days by default; `cdrhouse serve --audit-days N` (CDRHOUSE_AUDIT_DAYS)
-- or `cdrhouse audit retention N` changes it with ALTER TABLE … MODIFY TTL.

CREATE TABLE IF NOT EXISTS audit_log
(
    time         DateTime64(3, 'UTC'),
    event_id     String,
    tenant       LowCardinality(String),
    principal    String,
    key_id       String,
    user         String,
    channel      LowCardinality(String),
    action       LowCardinality(String),
    params       String,
    status       UInt16,
    error        LowCardinality(String),
    rows         UInt64,
    bytes        UInt64,
    duration_ms  UInt32,
    client       String,
    peer         String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (tenant, time, event_id)
TTL toDateTime(time) + INTERVAL 400 DAY;
