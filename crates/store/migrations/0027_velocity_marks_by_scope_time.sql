-- The breaker's marks, keyed by scope and time: one index finds a window's first mark and the scope's last (a
-- scope's marks sort by time as they do by place) and walks the scopes to prune old marks, where there were
-- three (two led by the tenant's id, and one by age). A scope names a session or a key, whose ids are unique
-- across tenants; the tenant's id stays as a column. A counted payment writes about half the pages it did
-- (BENCHMARKS.md, "The breaker's marks").
CREATE TABLE velocity_marks_by_scope (
    scope TEXT NOT NULL,
    at TEXT NOT NULL,
    seq BIGINT NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    usd_total TEXT NOT NULL,
    usd TEXT NOT NULL,
    PRIMARY KEY (scope, at, seq)
);
INSERT INTO velocity_marks_by_scope (scope, at, seq, tenant_id, usd_total, usd)
SELECT scope, at, seq, tenant_id, usd_total, usd FROM velocity_marks;
DROP TABLE velocity_marks;
ALTER TABLE velocity_marks_by_scope RENAME TO velocity_marks;
