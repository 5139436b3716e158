-- The hot CDR table, accounts, and the migrator's own bookkeeping.
--
-- cdr_records is the physical table; users never name it. They query the
-- logical table `cdrs`, which the SQL layer resolves to a guarded, deduplicated
-- read of this one (FINAL), so re-ingested or re-rated calls count once.
--
-- Sort key: every query is scoped to one tenant and most to one customer and a
-- time range, so (tenant_id, customer_id, start_time) lets ClickHouse prune
-- granules by all three; call_id ends the key because ReplacingMergeTree
-- deduplicates on the whole sort key: the same call ingested twice collapses
-- to the row with the highest `version`.

CREATE TABLE IF NOT EXISTS cdr_records
(
    tenant_id       LowCardinality(String),
    call_id         String,
    start_time      DateTime64(3, 'UTC'),
    answer_time     Nullable(DateTime64(3, 'UTC')),
    end_time        DateTime64(3, 'UTC'),
    duration        UInt32,
    billsec         UInt32,
    customer_id     UInt32,
    carrier_id      UInt32,
    direction       Enum8('outbound' = 1, 'inbound' = 2, 'internal' = 3),
    disposition     Enum8('ANSWERED' = 1, 'NO ANSWER' = 2, 'BUSY' = 3, 'FAILED' = 4, 'CONGESTION' = 5),
    src_number      String,
    dst_number      String,
    dst_prefix      LowCardinality(String),
    country         LowCardinality(String),
    release_reason  LowCardinality(String),
    sip_code        UInt16,
    sip_reason      LowCardinality(String),
    pdd_ms          UInt32,
    src_ip          String,
    dst_ip          String,
    codec           LowCardinality(String),
    customer_rate   Nullable(Decimal(18, 6)),
    customer_charge Nullable(Decimal(18, 6)),
    carrier_rate    Nullable(Decimal(18, 6)),
    carrier_cost    Nullable(Decimal(18, 6)),
    currency        LowCardinality(String),
    recording_url   String,
    -- internal: not in the field catalogue, never shown to users
    version         UInt64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    source          LowCardinality(String) DEFAULT ''
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(start_time)
ORDER BY (tenant_id, customer_id, start_time, call_id);

CREATE TABLE IF NOT EXISTS accounts
(
    tenant_id   LowCardinality(String),
    account_id  UInt32,
    code        String,
    kind        Enum8('customer' = 1, 'carrier' = 2),
    name        String,
    currency    LowCardinality(String),
    created_at  DateTime64(3, 'UTC') DEFAULT now64(3),
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant_id, account_id);
