-- Shared state of several `cdrhouse serve` processes on one store (issue 21).

-- Leases: one per kind of scheduled work (tiering, backup, reports, alerts, the
-- job sweeper). ClickHouse has no compare-and-set, so a claim relies on insert
-- deduplication instead (engine/leases.py, ARCHITECTURE.md "Leases"): a claim of
-- epoch N+1 carries the deduplication token `lease:<kind>:<N+1>:<token of N>`, and
-- of all the instances that saw epoch N expire and insert a claim, exactly one
-- block is stored. Renewals and the release are new versions of the holder's row.
CREATE TABLE IF NOT EXISTS leases
(
    kind        String,
    epoch       UInt64,
    token       String,
    holder      String,
    claimed_at  DateTime64(3, 'UTC'),
    expires_at  DateTime64(3, 'UTC'),
    -- the newest scheduled time (cron fire time) whose run is done, carried forward
    done_for    DateTime64(3, 'UTC'),
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (kind, epoch)
SETTINGS non_replicated_deduplication_window = 10000;

-- Every serving instance beats here every few seconds: another host tells a dead
-- owner of a job from a live one by its last beat, and the per-tenant and
-- per-principal caps are shared out among the live instances.
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

-- Failed API-key authentications per client address, counted by every instance
-- (the sliding window of api/auth.py). Old rows expire by themselves.
CREATE TABLE IF NOT EXISTS auth_failures
(
    at      DateTime64(3, 'UTC'),
    client  String
)
ENGINE = MergeTree
ORDER BY (client, at)
TTL toDateTime(at) + INTERVAL 1 DAY;
