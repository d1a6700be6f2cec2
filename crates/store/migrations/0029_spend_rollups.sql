-- Spend over time, for the console's charts: each booked spend (and each one taken back) is added, in the
-- transaction that books it, to the hour's total and the payee's day of the tenant, the agent key that asked and
-- the session. `owner` is `tenant`, `agent:<key id>` or `session:<id>`; `bucket` is `h:2026-12-06T03` (an hour's
-- total, `payee` empty) or `d:2026-12-06` (a payee's day), by the time the payment was asked for, in UTC. A chart
-- reads at most 30 days of an owner's rows, however many payments there are. `usd` is an exact decimal string.
CREATE TABLE spend_rollups (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    owner TEXT NOT NULL,
    bucket TEXT NOT NULL,
    payee TEXT NOT NULL,
    usd TEXT NOT NULL,
    payments BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, owner, bucket, payee)
);
