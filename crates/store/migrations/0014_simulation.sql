-- A policy's simulation replays a tenant's payments of a time window, in order.
CREATE INDEX payments_by_time ON payments (tenant_id, created_at);
