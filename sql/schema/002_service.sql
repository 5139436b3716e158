-- Tables of the HTTP service: API keys, saved queries, preferences, jobs.
-- Small, frequently updated rows: ReplacingMergeTree keyed by id, read with FINAL;
-- an update is a new row with a higher version, a delete sets `deleted`.

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

CREATE TABLE IF NOT EXISTS preferences
(
    key_id      String,
    body        String,
    updated_at  DateTime64(3, 'UTC'),
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY key_id;

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
