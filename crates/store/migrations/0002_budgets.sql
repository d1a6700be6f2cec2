-- Daily budget ledger: one row per session, budget day and ledger key (a currency symbol, or '$USD' for the
-- USD total). Amounts are exact decimal strings, changed only under the tenant's write lock and guarded by
-- `version`, so a writer that somehow lacked the lock fails instead of losing an update.
CREATE TABLE budget_usage (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    session_id TEXT NOT NULL REFERENCES sessions (id),
    day TEXT NOT NULL,
    ledger TEXT NOT NULL,
    spent TEXT NOT NULL,
    reserved TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (session_id, day, ledger)
);

-- The budget day a payment's reservation or spend was booked on, and a human-readable reason detail.
ALTER TABLE payments ADD COLUMN budget_day TEXT;
ALTER TABLE payments ADD COLUMN detail TEXT;
