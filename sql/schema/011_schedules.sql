-- Scheduled exports and reports (issue 18).
--
-- `schedules` is what a user asked for (a saved query or a built-in report, a
-- crontab, a format); only its owner changes it. `schedule_state` is what the
-- scheduler keeps about it (the next time to act, retry attempt, why it stopped);
-- only the scheduler writes it, so a user's edit and a run never overwrite each
-- other. `schedule_files` lists the files runs wrote to the archive store, until
-- they expire and are removed. Each run is also a row of `jobs` (kind 'export').
-- All three follow the service tables' pattern: ReplacingMergeTree by id, read
-- with FINAL, an update is the whole row again with a higher version.

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

-- One row per (schedule, slot, attempt): who runs it. Every process that finds the
-- slot due inserts its claim with the same deduplication token; ClickHouse keeps
-- the first block and drops the others, so reading it back tells each process
-- whether it won (engine/schedules.py, claim_run). ClickHouse has no
-- compare-and-set; insert deduplication is its one atomic decision.
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
