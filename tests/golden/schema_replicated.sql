-- 001_core.sql
-- where: once
CREATE TABLE IF NOT EXISTS cdr_records_local ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', version)
PARTITION BY toYYYYMM(start_time)
ORDER BY (tenant_id, customer_id, start_time, call_id);

-- where: once
CREATE TABLE IF NOT EXISTS cdr_records ON CLUSTER cdr_cluster AS cdr_records_local
ENGINE = Distributed('cdr_cluster', 'cdrhouse', 'cdr_records_local', cityHash64(tenant_id, call_id));

-- where: once
CREATE TABLE IF NOT EXISTS accounts ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY (tenant_id, account_id);

-- 002_service.sql
-- where: once
CREATE TABLE IF NOT EXISTS api_keys ON CLUSTER cdr_cluster
(
    key_id      String,
    secret_hash String,
    principal   String,
    name        String,
    created_at  DateTime64(3, 'UTC'),
    revoked_at  Nullable(DateTime64(3, 'UTC')),
    version     UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY key_id;

-- where: once
CREATE TABLE IF NOT EXISTS saved_queries ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY query_id;

-- where: once
CREATE TABLE IF NOT EXISTS preferences ON CLUSTER cdr_cluster
(
    key_id      String,
    body        String,
    updated_at  DateTime64(3, 'UTC'),
    version     UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY key_id;

-- where: once
CREATE TABLE IF NOT EXISTS jobs ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY job_id;

-- 003_tiering.sql
-- where: once
CREATE TABLE IF NOT EXISTS warm_months ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY (tenant_id, month);

-- 004_rating.sql
-- where: once
ALTER TABLE cdr_records_local ON CLUSTER cdr_cluster ADD COLUMN IF NOT EXISTS rating_status LowCardinality(String) DEFAULT '';

-- where: once
ALTER TABLE cdr_records ON CLUSTER cdr_cluster ADD COLUMN IF NOT EXISTS rating_status LowCardinality(String) DEFAULT '';

-- where: once
ALTER TABLE cdr_records_local ON CLUSTER cdr_cluster ADD COLUMN IF NOT EXISTS customer_billsec Nullable(UInt32);

-- where: once
ALTER TABLE cdr_records ON CLUSTER cdr_cluster ADD COLUMN IF NOT EXISTS customer_billsec Nullable(UInt32);

-- where: once
CREATE TABLE IF NOT EXISTS rate_cards ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY (tenant_id, kind, account_id, prefix, effective_from);

-- where: once
CREATE TABLE IF NOT EXISTS cdr_daily_summary_local ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', (calls, connected, duration, billsec, billed_sec, customer_charge, carrier_cost, unrated))
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, day, customer_id, carrier_id, country, dst_prefix, currency);

-- where: once
CREATE TABLE IF NOT EXISTS cdr_daily_summary ON CLUSTER cdr_cluster AS cdr_daily_summary_local
ENGINE = Distributed('cdr_cluster', 'cdrhouse', 'cdr_daily_summary_local', cityHash64(tenant_id, day, customer_id));

-- where: once
CREATE MATERIALIZED VIEW IF NOT EXISTS cdr_daily_summary_mv ON CLUSTER cdr_cluster TO cdr_daily_summary_local AS
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
    FROM cdr_records_local
    WHERE NOT startsWith(source, 'maint:')
)
GROUP BY tenant_id, day, customer_id, carrier_id, country, dst_prefix, currency;

-- where: once
CREATE TABLE IF NOT EXISTS ledger ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}')
ORDER BY (tenant_id, kind, account_id, at, entry_id);

-- where: once
CREATE TABLE IF NOT EXISTS balances ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY (tenant_id, kind, account_id);

-- where: once
CREATE TABLE IF NOT EXISTS recalc_rows ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}')
ORDER BY (job_id, side, tenant_id, call_id);

-- 005_physical.sql
-- where: once
ALTER TABLE cdr_records_local ON CLUSTER cdr_cluster ADD INDEX IF NOT EXISTS idx_src_number src_number TYPE text(tokenizer = 'array') GRANULARITY 100000000;

-- where: once
ALTER TABLE cdr_records_local ON CLUSTER cdr_cluster ADD INDEX IF NOT EXISTS idx_dst_number dst_number TYPE text(tokenizer = 'array') GRANULARITY 100000000;

-- where: once
ALTER TABLE cdr_records_local ON CLUSTER cdr_cluster MATERIALIZE INDEX idx_src_number;

-- where: once
ALTER TABLE cdr_records_local ON CLUSTER cdr_cluster MATERIALIZE INDEX idx_dst_number;

-- 008_backups.sql
-- where: once
CREATE TABLE IF NOT EXISTS backups ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY backup_id;

-- 009_web_sessions.sql
-- where: once
CREATE TABLE IF NOT EXISTS web_users ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY user_id;

-- where: once
CREATE TABLE IF NOT EXISTS web_sessions ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY session_hash
TTL toDateTime(expires_at) + INTERVAL 1 DAY;

-- where: once
CREATE TABLE IF NOT EXISTS web_login_attempts ON CLUSTER cdr_cluster
(
    at        DateTime64(3, 'UTC'),
    name      String,
    client    String,
    ok        Bool
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}')
ORDER BY (name, at)
TTL toDateTime(at) + INTERVAL 1 DAY;

-- 010_audit.sql
-- where: once
CREATE TABLE IF NOT EXISTS audit_log ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}')
PARTITION BY toYYYYMM(time)
ORDER BY (tenant, time, event_id)
TTL toDateTime(time) + INTERVAL 400 DAY;

-- 011_schedules.sql
-- where: once
CREATE TABLE IF NOT EXISTS schedules ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY schedule_id;

-- where: once
CREATE TABLE IF NOT EXISTS schedule_state ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY schedule_id;

-- where: once
CREATE TABLE IF NOT EXISTS schedule_files ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY job_id;

-- where: once
CREATE TABLE IF NOT EXISTS schedule_claims ON CLUSTER cdr_cluster
(
    schedule_id    String,
    slot           DateTime64(3, 'UTC'),
    attempt        UInt32,
    job_id         String,
    claimed_at     DateTime64(3, 'UTC')
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}')
ORDER BY (schedule_id, slot, attempt)
SETTINGS non_replicated_deduplication_window = 10000;

-- 012_alerts.sql
-- where: once
CREATE TABLE IF NOT EXISTS alerts ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY (tenant_id, alert_id);

-- where: once
CREATE TABLE IF NOT EXISTS alert_thresholds ON CLUSTER cdr_cluster
(
    tenant_id  LowCardinality(String),
    detector   LowCardinality(String),
    settings   String,
    updated_at DateTime64(3, 'UTC'),
    updated_by String,
    version    UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY (tenant_id, detector);

-- where: once
CREATE TABLE IF NOT EXISTS alert_evaluations ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY (tenant_id, detector);

-- 013_leases.sql
-- where: once
CREATE TABLE IF NOT EXISTS leases ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', version)
ORDER BY (kind, epoch)
SETTINGS non_replicated_deduplication_window = 10000;

-- where: once
CREATE TABLE IF NOT EXISTS service_instances ON CLUSTER cdr_cluster
(
    instance_id String,
    host        String,
    pid         UInt32,
    started_at  DateTime64(3, 'UTC'),
    beat_at     DateTime64(3, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}', beat_at)
ORDER BY instance_id
TTL toDateTime(beat_at) + INTERVAL 1 DAY;

-- where: once
CREATE TABLE IF NOT EXISTS auth_failures ON CLUSTER cdr_cluster
(
    at      DateTime64(3, 'UTC'),
    client  String
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}')
ORDER BY (client, at)
TTL toDateTime(at) + INTERVAL 1 DAY;

-- 014_granules.sql
-- 015_settled.sql
-- where: once
ALTER TABLE cdr_records_local ON CLUSTER cdr_cluster MODIFY SETTING min_age_to_force_merge_seconds = 21600, min_age_to_force_merge_on_partition_only = 1;

-- where: once
ALTER TABLE cdr_daily_summary_local ON CLUSTER cdr_cluster MODIFY SETTING min_age_to_force_merge_seconds = 21600, min_age_to_force_merge_on_partition_only = 1;

-- 016_by_time.sql
-- where: once
CREATE TABLE IF NOT EXISTS cdr_records_by_time_local ON CLUSTER cdr_cluster
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', version)
PARTITION BY toYYYYMM(start_time)
ORDER BY (tenant_id, start_time, call_id, customer_id)
SETTINGS index_granularity = 1024, min_compress_block_size = 8192, max_compress_block_size = 65536, min_age_to_force_merge_seconds = 21600, min_age_to_force_merge_on_partition_only = 1;

-- where: once
CREATE TABLE IF NOT EXISTS cdr_records_by_time ON CLUSTER cdr_cluster AS cdr_records_by_time_local
ENGINE = Distributed('cdr_cluster', 'cdrhouse', 'cdr_records_by_time_local', cityHash64(tenant_id, call_id));

-- where: once
CREATE MATERIALIZED VIEW IF NOT EXISTS cdr_records_by_time_mv ON CLUSTER cdr_cluster TO cdr_records_by_time_local AS SELECT * FROM cdr_records_local;

-- where: once
INSERT INTO cdr_records_by_time SETTINGS distributed_foreground_insert = 1 SELECT * FROM cdr_records;

