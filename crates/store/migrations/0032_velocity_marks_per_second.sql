-- A breaker's mark now covers a scope's counted payments within one second: the row the second's first payment
-- wrote is updated in place by the rest (their running totals as `last_seq` and `last_usd_total`) instead of a row
-- and an index entry each, which was most of what the breaker cost a payment (BENCHMARKS.md, "The breaker's marks
-- per second"). Marks written before have none: theirs are their first payment's (NULL reads as such).
ALTER TABLE velocity_marks ADD COLUMN last_seq BIGINT;
ALTER TABLE velocity_marks ADD COLUMN last_usd_total TEXT;
