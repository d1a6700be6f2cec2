-- What a payment rail signed for a payment, written before it leaves the process. One row per payment: the
-- primary key is what keeps two runners from signing two different payments for one authorization. After a
-- crash the same signed artifact is sent again or found on chain, never replaced by a new one while it can
-- still settle.
CREATE TABLE payment_attempts (
    payment_id TEXT PRIMARY KEY REFERENCES payments (id),
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    rail TEXT NOT NULL,
    network TEXT NOT NULL,
    -- JSON: the signed transaction or x402 payload, and what is needed to find it on chain.
    signed TEXT NOT NULL,
    tx_hash TEXT,
    -- JSON: the settlement (for x402, the resource's answer), once known.
    receipt TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX payment_attempts_open ON payment_attempts (tenant_id) WHERE receipt IS NULL;
