-- A payment's id is a UUIDv7 of its own time, so a time window of payments is a range of the primary key: the
-- simulation reads that, and no payment pays for an index by time.
DROP INDEX payments_by_time;
