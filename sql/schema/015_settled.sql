-- Settled partitions: a month nobody writes to any more is one merged part
-- (issue 17: interactive pages under load).
--
-- Every read of cdr_records and of the daily summary uses FINAL (re-rating writes
-- new versions of calls). ClickHouse reads a partition that is a single *merged*
-- part without merging anything at read time, because a merge already left one
-- version per key; any other partition is merged on every read. Measured on 5M CDRs
-- (benchmarks/README.md, "Settled partitions"): a customer's page 11 -> 7 ms alone,
-- an operator's page 16.8 -> 15.0 ms of server CPU at 32 clients. The daily summary
-- is read with FINAL on one node as well (sql/logical.py).
--
-- 1. ClickHouse merges a partition whose parts are all older than six hours into one
--    part. The month being ingested keeps getting new parts, so it is left to the
--    ordinary merges; a closed month, or one that a re-rate wrote to, settles six
--    hours after its last write (six hours, not minutes: an hourly batch ingest
--    would otherwise rewrite the whole current month every hour).
-- 2. Partitions that are one *unmerged* part (a month copied by the rebuild of
--    014, or written by one insert) are never merged by ClickHouse on its own:
--    merged once here. `optimize_skip_merged_partitions` leaves settled ones alone.
--    On 5M CDRs this took 10 s; it keeps each call's newest version, as any merge.
--    engine/relayout.py now leaves every partition it copies merged.
--
-- On a replicated cluster (1. applies) the one-time merge of 2. is not run: the
-- replicas' parts were never rebuilt by 014 and are merged by ClickHouse as usual.

ALTER TABLE cdr_records MODIFY SETTING min_age_to_force_merge_seconds = 21600, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE cdr_daily_summary MODIFY SETTING min_age_to_force_merge_seconds = 21600, min_age_to_force_merge_on_partition_only = 1;

OPTIMIZE TABLE cdr_records FINAL SETTINGS optimize_skip_merged_partitions = 1;

OPTIMIZE TABLE cdr_daily_summary FINAL SETTINGS optimize_skip_merged_partitions = 1;
