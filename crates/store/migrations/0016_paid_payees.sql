-- A payee's history is read from the payments that were let through only: an index of those, so a payee with
-- many requests waiting on people costs a request's filing nothing more (and waiting payments no index entry).
DROP INDEX payments_by_recipient;
CREATE INDEX payments_paid_to ON payments (tenant_id, recipient, created_at)
    WHERE status IN ('executed', 'authorized');
