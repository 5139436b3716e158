-- Physical design for the viewer's selective queries (benchmarks issue 7).
--
-- Number search (the viewer's `number`, matching source OR destination) had
-- nothing to prune by: the sort key is (tenant, customer, start_time), so an
-- exact number over 90 days read every granule of the tenant in that range.
-- A text (inverted) index per number column, with the whole value as its one
-- token (tokenizer 'array'), answers `src_number = x OR dst_number = x` from
-- the posting lists: row-level, per part (GRANULARITY large = one index per
-- part). It is exact under FINAL (use_skip_indexes_if_final_exact_mode, on by
-- default), so results do not change; tests/test_physical.py compares them
-- with the indexes ignored.
--
-- Measured on 1M CDRs (benchmarks/README.md, "Physical design"): exact number
-- search over 90 days 45 -> 19 ms; +13 % on disk. Prefix and suffix searches
-- gain nothing from it (their matches are everywhere), so sql/limits.py turns
-- off the index's LIKE-by-dictionary-scan evaluation, which made them slower.
-- Kept out after measuring: a number -> (customer, day) lookup table kept by a
-- materialized view (forward and reversed numbers: +30 % on disk, no faster),
-- a minmax index on start_time for top-N pages (no change).
--
-- Existing stores: MATERIALIZE builds the indexes for parts written before
-- this file (a background mutation); new parts get them on insert and merge.
-- Tiering needs nothing: the indexes live in each part (dropped with it,
-- rebuilt when a restore INSERTs the rows again).
--
-- Server deployments: this is ClickHouse 26.x syntax (the embedded engine is
-- 26.9). On 25.x the text index is experimental (allow_experimental_full_text_index)
-- and sql/limits.py's use_text_index_like_evaluation_by_dictionary_scan does
-- not exist; docker-compose.yml pins 25.8, so bump the server image with this.

ALTER TABLE cdr_records ADD INDEX IF NOT EXISTS idx_src_number src_number TYPE text(tokenizer = 'array') GRANULARITY 100000000;

ALTER TABLE cdr_records ADD INDEX IF NOT EXISTS idx_dst_number dst_number TYPE text(tokenizer = 'array') GRANULARITY 100000000;

ALTER TABLE cdr_records MATERIALIZE INDEX idx_src_number;

ALTER TABLE cdr_records MATERIALIZE INDEX idx_dst_number;
