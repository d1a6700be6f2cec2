-- A key may expire; once past `expires_at` it authenticates nowhere and its open streams end.
ALTER TABLE api_keys ADD COLUMN expires_at TEXT;
-- An agent's lists and streams are limited to the sessions its key created.
CREATE INDEX sessions_by_owner ON sessions (tenant_id, created_by);
-- Policies: the rules people set for the agents bound to them. Every change bumps `version`; the audit trail
-- keeps each version's old and new rules. A tenant's default policy has a fixed id per tenant and exists as a
-- row only once an admin changed it (until then it is the built-in defaults).
CREATE TABLE policies (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    rules TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);
-- The policy an agent key is bound to (NULL: its tenant's default), and the one a session was opened under.
ALTER TABLE api_keys ADD COLUMN policy_id TEXT;
ALTER TABLE sessions ADD COLUMN policy_id TEXT;
-- A key's usage per period across all its sessions, for its policy's limits: `period` is `day:2026-11-30`,
-- `week:2026-11-30` (the Monday) or `month:2026-11`, in UTC; `ledger` a currency symbol or '$USD'.
CREATE TABLE key_usage (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    key_id TEXT NOT NULL,
    period TEXT NOT NULL,
    ledger TEXT NOT NULL,
    spent TEXT NOT NULL,
    reserved TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (key_id, period, ledger)
);
-- The key whose period ledgers a payment is booked on (NULL for payments from before them).
ALTER TABLE payments ADD COLUMN limits_key TEXT;
-- The wallets Paygent holds keys for, each owned by one tenant: only that tenant's sessions may pay from it.
-- `address` is lower-case hex.
CREATE TABLE wallets (
    address TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    created_at TEXT NOT NULL
);
-- The payees a key's sessions were let pay (normalized: a lower-case address, or an x402 service's scheme and
-- host), so a policy can tell a key's first payment to a payee. Written when a person approves a payment, and
-- at every allowed payment while the key's policy watches for new payees.
CREATE TABLE key_payees (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    key_id TEXT NOT NULL,
    payee TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (key_id, payee)
);
