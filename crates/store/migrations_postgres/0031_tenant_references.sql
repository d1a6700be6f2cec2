-- The tables every payment, request and decision writes no longer reference `tenants` by foreign key on
-- PostgreSQL. Their rows are written only in their own tenant's write, which holds that tenant's row lock (it
-- reads the row FOR UPDATE and fails if there is none), so the check adds nothing the write does not know; and
-- the check, a share lock on that same row taken from the write's savepoint, cost about as much as writing the
-- row (BENCHMARKS.md, "Foreign keys to tenants"). Tenants are never deleted. Tables written across tenants (an
-- operator assigning a wallet) and rarely (keys, sessions, policies) keep theirs, as SQLite keeps all of them.
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT conrelid::regclass AS tbl, conname FROM pg_constraint
        WHERE contype = 'f' AND confrelid = 'tenants'::regclass
          AND conrelid::regclass::text IN ('payments', 'spend_rollups', 'budget_usage', 'audit_log', 'events',
                                           'approval_requests', 'key_pending', 'velocity_marks')
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.tbl, c.conname);
    END LOOP;
END $$;
