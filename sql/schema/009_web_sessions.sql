-- Tables of the web viewer: portal users, browser sessions and failed sign-ins.
-- They live in ClickHouse, not in a process's memory, because several service
-- processes may answer the same browser (a session made by one is honoured by
-- all, and a failed-login count cannot be dodged by landing on another one).
-- Users and sessions follow the service tables' pattern: ReplacingMergeTree by
-- id, read with FINAL, an update is the whole row again with a higher version.

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

-- `session_hash` is SHA-256 of the cookie's secret: a stolen table grants nothing.
-- A session belongs to a user (user_id) or was opened with an API key (key_id).
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

-- One row per sign-in attempt that matters to the limits: failures, and the
-- successes that reset a user's count. Old rows expire by themselves.
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
