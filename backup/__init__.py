"""Backups and disaster recovery of the hot store, with ClickHouse's own BACKUP/RESTORE.

`location` says where backups live (S3 or a directory) and how ClickHouse names
them; `catalog` is the record of each backup (a manifest beside its files, so a
restored store still finds them, mirrored into the store's `backups` table for
status and metrics); `ops` runs, verifies, restores and prunes them; `jobs` and
`schedule` record them as jobs and run them inside `cdrhouse serve`.
"""
