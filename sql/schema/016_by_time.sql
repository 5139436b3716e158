-- A time-ordered copy of the CDRs for pages across many customers (issue 17:
-- interactive pages under load).
--
-- cdr_records is sorted by (tenant, customer, start_time): a customer's newest page is
-- read in key order from its newest end, but a tenant's, a carrier's or an admin's
-- newest page is spread over every customer's stretch of the key, so each of those
-- pages read a day of the tenant's calls and sorted it (~14 ms of server CPU at 32
-- clients on 5M CDRs, against ~8.5 for a customer's). Sorting cdr_records by time
-- instead would make a small customer's page 3.6-4.8x dearer (benchmarks/README.md,
-- "A time-leading key against small customers"); ClickHouse reads no projection under
-- FINAL. So the pages that need time order get a second table sorted by it, kept by a
-- materialized view: every INSERT into cdr_records (ingest, re-rate, undo, rows the
-- tiering run returns, a restore from the archive) is copied here in the same block.
-- Measured at 32 clients: operators' listing 105-114 -> 145-169 req/s, server CPU
-- 14-16 -> 9-10 ms a page (benchmarks/README.md, "A time-ordered copy").
--
-- Exactness: the copy holds every version of every call, and its key has the same
-- columns as cdr_records' (tenant, customer, start_time, call_id, only in another
-- order), so `FINAL` keeps exactly the rows it keeps there. The tiering run drops a
-- month here when it moves it out of cdr_records (tiering/archive.py); tests compare
-- the pages read here with the same pages read from cdr_records through ingest,
-- re-rate, undo, archive and restore.
--
-- Cost: about the hot table's disk again (no text indexes here: number searches, and
-- rules on numbers or accounts, keep reading cdr_records, whose indexes serve them),
-- and a backup holds both tables. Its columns must stay those of cdr_records, in order
-- (`SELECT *` below): a migration that changes one changes both (a test checks).

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

CREATE MATERIALIZED VIEW IF NOT EXISTS cdr_records_by_time_mv TO cdr_records_by_time AS SELECT * FROM cdr_records;

-- The calls stored before this migration (every version, as they are). A write racing
-- this copy reaches the table twice, through the view and here: the same row twice,
-- which FINAL reads once. On a cluster this runs once, through the Distributed tables,
-- which place every row on the shard its call lives on.
INSERT INTO cdr_records_by_time SETTINGS distributed_foreground_insert = 1 SELECT * FROM cdr_records;

OPTIMIZE TABLE cdr_records_by_time FINAL SETTINGS optimize_skip_merged_partitions = 1;
