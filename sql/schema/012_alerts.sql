-- Anomaly alerts (issue 18): what the detectors found, per-tenant thresholds, and
-- when each detector last ran.
--
-- `alerts`: one row per alert, rewritten with a higher `version` as it changes
-- (evidence refreshed while the condition holds, acknowledged, resolved); read
-- with FINAL. An alert is about a subject of one detector in one tenant; at most
-- one alert per (tenant, detector, subject) is open or acknowledged at a time
-- (engine/alerts.py). `customer_id` / `carrier_id` name the account the alert is
-- about (0: none), which is what the guard of a customer or carrier key filters on.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id     String,
    tenant_id    LowCardinality(String),
    detector     LowCardinality(String),
    subject      String,
    customer_id  UInt32,
    carrier_id   UInt32,
    state        Enum8('open' = 1, 'acknowledged' = 2, 'resolved' = 3),
    summary      String,
    evidence     String,
    opened_at    DateTime64(3, 'UTC'),
    last_seen_at DateTime64(3, 'UTC'),
    resolved_at  Nullable(DateTime64(3, 'UTC')),
    acked_at     Nullable(DateTime64(3, 'UTC')),
    acked_by     String,
    evaluations  UInt32,
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant_id, alert_id);

-- Per-tenant overrides of detector settings set through the API or CLI (JSON
-- object of setting -> number); the latest version per (tenant, detector) wins.
CREATE TABLE IF NOT EXISTS alert_thresholds
(
    tenant_id  LowCardinality(String),
    detector   LowCardinality(String),
    settings   String,
    updated_at DateTime64(3, 'UTC'),
    updated_by String,
    version    UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant_id, detector);

-- The last evaluation of each detector per tenant (for /metrics and `alerts status`):
-- in a table, not process memory, so any service process can report it.
CREATE TABLE IF NOT EXISTS alert_evaluations
(
    tenant_id    LowCardinality(String),
    detector     LowCardinality(String),
    evaluated_at DateTime64(3, 'UTC'),
    data_time    DateTime64(3, 'UTC'),
    seconds      Float64,
    firing       UInt32,
    error        String,
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant_id, detector);
