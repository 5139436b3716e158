-- 001_core.sql
-- where: all
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
    version         UInt64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    source          LowCardinality(String) DEFAULT ''
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(start_time)
ORDER BY (tenant_id, customer_id, start_time, call_id);

-- where: all
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

-- 002_service.sql
-- where: all
CREATE TABLE IF NOT EXISTS api_keys
(
    key_id      String,
    secret_hash String,
    principal   String,
    name        String,
    created_at  DateTime64(3, 'UTC'),
    revoked_at  Nullable(DateTime64(3, 'UTC')),
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY key_id;

-- where: all
CREATE TABLE IF NOT EXISTS saved_queries
(
    query_id    String,
    owner_key   String,
    principal   String,
    tenant_id   String,
    name        String,
    kind        LowCardinality(String),
    body        String,
    shared      Bool,
    created_at  DateTime64(3, 'UTC'),
    updated_at  DateTime64(3, 'UTC'),
    deleted     Bool DEFAULT false,
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY query_id;

-- where: all
CREATE TABLE IF NOT EXISTS preferences
(
    key_id      String,
    body        String,
    updated_at  DateTime64(3, 'UTC'),
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY key_id;

-- where: all
CREATE TABLE IF NOT EXISTS jobs
(
    job_id      String,
    kind        LowCardinality(String),
    tenant_id   String,
    principal   String,
    state       LowCardinality(String),
    progress    Float64,
    params      String,
    result      String,
    error       String,
    created_at  DateTime64(3, 'UTC'),
    updated_at  DateTime64(3, 'UTC'),
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY job_id;

-- 003_tiering.sql
-- where: all
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

-- 004_rating.sql
-- where: all
ALTER TABLE cdr_records ADD COLUMN IF NOT EXISTS rating_status LowCardinality(String) DEFAULT '';

-- where: all
ALTER TABLE cdr_records ADD COLUMN IF NOT EXISTS customer_billsec Nullable(UInt32);

-- where: all
CREATE TABLE IF NOT EXISTS rate_cards
(
    tenant_id         LowCardinality(String),
    kind              Enum8('customer' = 1, 'carrier' = 2),
    account_id        UInt32,
    prefix            String,
    effective_from    DateTime64(3, 'UTC'),
    effective_to      Nullable(DateTime64(3, 'UTC')),
    rate_per_min      Decimal(18, 6),
    connect_fee       Decimal(18, 6),
    increment_initial UInt32,
    increment_next    UInt32,
    min_duration      UInt32,
    rounding          UInt8,
    currency          LowCardinality(String),
    deleted           Bool DEFAULT false,
    imported_at       DateTime64(3, 'UTC') DEFAULT now64(3),
    version           UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant_id, kind, account_id, prefix, effective_from);

-- where: all
CREATE TABLE IF NOT EXISTS cdr_daily_summary
(
    tenant_id       LowCardinality(String),
    day             Date,
    customer_id     UInt32,
    carrier_id      UInt32,
    country         LowCardinality(String),
    dst_prefix      LowCardinality(String),
    currency        LowCardinality(String),
    calls           Int64,
    connected       Int64,
    duration        Int64,
    billsec         Int64,
    billed_sec      Int64,
    customer_charge Decimal(38, 6),
    carrier_cost    Decimal(38, 6),
    unrated         Int64,
    asr             Float64 ALIAS if(calls = 0, 0, connected / calls),
    acd             Float64 ALIAS if(connected = 0, 0, billsec / connected),
    margin          Decimal(38, 6) ALIAS customer_charge - carrier_cost
)
ENGINE = SummingMergeTree((calls, connected, duration, billsec, billed_sec, customer_charge, carrier_cost, unrated))
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, day, customer_id, carrier_id, country, dst_prefix, currency);

-- where: all
CREATE MATERIALIZED VIEW IF NOT EXISTS cdr_daily_summary_mv TO cdr_daily_summary AS
SELECT
    tenant_id, d AS day, customer_id, carrier_id, country, dst_prefix, currency,
    toInt64(count()) AS calls,
    toInt64(countIf(bill_s > 0)) AS connected,
    toInt64(sum(dur_s)) AS duration,
    toInt64(sum(bill_s)) AS billsec,
    toInt64(sum(ifNull(cbill_s, bill_s))) AS billed_sec,
    toDecimal128(sum(ifNull(charge, toDecimal64(0, 6))), 6) AS customer_charge,
    toDecimal128(sum(ifNull(cost, toDecimal64(0, 6))), 6) AS carrier_cost,
    toInt64(countIf(charge IS NULL OR cost IS NULL)) AS unrated
FROM
(
    SELECT tenant_id, toDate(start_time) AS d, customer_id, carrier_id, country, dst_prefix,
           currency, duration AS dur_s, billsec AS bill_s, customer_billsec AS cbill_s,
           customer_charge AS charge, carrier_cost AS cost
    FROM cdr_records
    WHERE NOT startsWith(source, 'maint:')
)
GROUP BY tenant_id, day, customer_id, carrier_id, country, dst_prefix, currency;

-- where: all
CREATE TABLE IF NOT EXISTS ledger
(
    entry_id    String,
    tenant_id   LowCardinality(String),
    kind        Enum8('customer' = 1, 'carrier' = 2),
    account_id  UInt32,
    entry_type  LowCardinality(String),
    amount      Decimal(18, 6),
    currency    LowCardinality(String),
    at          DateTime64(3, 'UTC'),
    note        String,
    created_by  String,
    created_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (tenant_id, kind, account_id, at, entry_id);

-- where: all
CREATE TABLE IF NOT EXISTS balances
(
    tenant_id    LowCardinality(String),
    kind         Enum8('customer' = 1, 'carrier' = 2),
    account_id   UInt32,
    currency     LowCardinality(String),
    ledger_total Decimal(38, 6),
    usage_total  Decimal(38, 6),
    balance      Decimal(38, 6),
    calls        Int64,
    computed_at  DateTime64(3, 'UTC'),
    job_id       String,
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant_id, kind, account_id);

-- where: all
CREATE TABLE IF NOT EXISTS recalc_rows
(
    job_id          String,
    side            Enum8('old' = 1, 'new' = 2),
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
    version         UInt64,
    ingested_at     DateTime64(3, 'UTC'),
    source          LowCardinality(String),
    rating_status   LowCardinality(String),
    customer_billsec Nullable(UInt32)
)
ENGINE = ReplacingMergeTree
ORDER BY (job_id, side, tenant_id, call_id);

-- 005_physical.sql
-- where: all
ALTER TABLE cdr_records ADD INDEX IF NOT EXISTS idx_src_number src_number TYPE text(tokenizer = 'array') GRANULARITY 100000000;

-- where: all
ALTER TABLE cdr_records ADD INDEX IF NOT EXISTS idx_dst_number dst_number TYPE text(tokenizer = 'array') GRANULARITY 100000000;

-- where: all
ALTER TABLE cdr_records MATERIALIZE INDEX idx_src_number;

-- where: all
ALTER TABLE cdr_records MATERIALIZE INDEX idx_dst_number;

-- 008_backups.sql
-- where: all
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

-- 009_web_sessions.sql
-- where: all
CREATE TABLE IF NOT EXISTS web_users
(
    user_id       String,
    name          String,
    password_hash String,
    principal     String,
    tenant_id     String,
    created_by    String,
    created_at    DateTime64(3, 'UTC'),
    disabled      Bool DEFAULT false,
    deleted       Bool DEFAULT false,
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY user_id;

-- where: all
CREATE TABLE IF NOT EXISTS web_sessions
(
    session_hash  String,
    user_id       String,
    key_id        String,
    principal     String,
    csrf_token    String,
    created_at    DateTime64(3, 'UTC'),
    expires_at    DateTime64(3, 'UTC'),
    ended_at      Nullable(DateTime64(3, 'UTC')),
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY session_hash
TTL toDateTime(expires_at) + INTERVAL 1 DAY;

-- where: all
CREATE TABLE IF NOT EXISTS web_login_attempts
(
    at        DateTime64(3, 'UTC'),
    name      String,
    client    String,
    ok        Bool
)
ENGINE = MergeTree
ORDER BY (name, at)
TTL toDateTime(at) + INTERVAL 1 DAY;

-- 010_audit.sql
-- where: all
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

-- 011_schedules.sql
-- where: all
CREATE TABLE IF NOT EXISTS schedules
(
    schedule_id    String,
    owner_key      String,
    principal      String,
    tenant_id      String,
    name           String,
    cron           String,
    body           String,
    created_at     DateTime64(3, 'UTC'),
    updated_at     DateTime64(3, 'UTC'),
    deleted        Bool DEFAULT false,
    version        UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY schedule_id;

-- where: all
CREATE TABLE IF NOT EXISTS schedule_state
(
    schedule_id    String,
    definition     UInt64,
    slot           DateTime64(3, 'UTC'),
    next_run       DateTime64(3, 'UTC'),
    attempt        UInt32,
    stopped        String,
    last_job       String,
    last_error     String,
    updated_at     DateTime64(3, 'UTC'),
    version        UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY schedule_id;

-- where: all
CREATE TABLE IF NOT EXISTS schedule_files
(
    job_id         String,
    schedule_id    String,
    tenant_id      String,
    principal      String,
    file_key       String,
    file_name      String,
    media_type     String,
    rows           UInt64,
    bytes          UInt64,
    created_at     DateTime64(3, 'UTC'),
    expires_at     DateTime64(3, 'UTC'),
    removed        Bool DEFAULT false,
    version        UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY job_id;

-- where: all
CREATE TABLE IF NOT EXISTS schedule_claims
(
    schedule_id    String,
    slot           DateTime64(3, 'UTC'),
    attempt        UInt32,
    job_id         String,
    claimed_at     DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (schedule_id, slot, attempt)
SETTINGS non_replicated_deduplication_window = 10000;

-- 012_alerts.sql
-- where: all
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

-- where: all
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

-- where: all
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

-- 013_leases.sql
-- where: all
CREATE TABLE IF NOT EXISTS leases
(
    kind        String,
    epoch       UInt64,
    token       String,
    holder      String,
    claimed_at  DateTime64(3, 'UTC'),
    expires_at  DateTime64(3, 'UTC'),
    done_for    DateTime64(3, 'UTC'),
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (kind, epoch)
SETTINGS non_replicated_deduplication_window = 10000;

-- where: all
CREATE TABLE IF NOT EXISTS service_instances
(
    instance_id String,
    host        String,
    pid         UInt32,
    started_at  DateTime64(3, 'UTC'),
    beat_at     DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(beat_at)
ORDER BY instance_id
TTL toDateTime(beat_at) + INTERVAL 1 DAY;

-- where: all
CREATE TABLE IF NOT EXISTS auth_failures
(
    at      DateTime64(3, 'UTC'),
    client  String
)
ENGINE = MergeTree
ORDER BY (client, at)
TTL toDateTime(at) + INTERVAL 1 DAY;

-- 014_granules.sql
-- where: all
REBUILD TABLE cdr_records SETTINGS index_granularity = 1024, min_compress_block_size = 8192, max_compress_block_size = 65536;

-- 015_settled.sql
-- where: all
ALTER TABLE cdr_records MODIFY SETTING min_age_to_force_merge_seconds = 21600, min_age_to_force_merge_on_partition_only = 1;

-- where: all
ALTER TABLE cdr_daily_summary MODIFY SETTING min_age_to_force_merge_seconds = 21600, min_age_to_force_merge_on_partition_only = 1;

-- where: all
OPTIMIZE TABLE cdr_records FINAL SETTINGS optimize_skip_merged_partitions = 1;

-- where: all
OPTIMIZE TABLE cdr_daily_summary FINAL SETTINGS optimize_skip_merged_partitions = 1;

-- 016_by_time.sql
-- where: all
CREATE TABLE IF NOT EXISTS cdr_records_by_time
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
    version         UInt64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    source          LowCardinality(String) DEFAULT '',
    rating_status   LowCardinality(String) DEFAULT '',
    customer_billsec Nullable(UInt32)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(start_time)
ORDER BY (tenant_id, start_time, call_id, customer_id)
SETTINGS index_granularity = 1024, min_compress_block_size = 8192, max_compress_block_size = 65536, min_age_to_force_merge_seconds = 21600, min_age_to_force_merge_on_partition_only = 1;

-- where: all
CREATE MATERIALIZED VIEW IF NOT EXISTS cdr_records_by_time_mv TO cdr_records_by_time AS SELECT * FROM cdr_records;

-- where: all
INSERT INTO cdr_records_by_time SETTINGS distributed_foreground_insert = 1 SELECT * FROM cdr_records;

-- where: all
OPTIMIZE TABLE cdr_records_by_time FINAL SETTINGS optimize_skip_merged_partitions = 1;

