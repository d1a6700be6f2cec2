-- The tenant-wide emergency stop: NULL when released, else a JSON record of who engaged it, when and why.
-- It lives on the tenant row that every write transaction locks first, so checking it costs nothing.
ALTER TABLE tenants ADD COLUMN kill_switch TEXT;

-- The sweeper looks for overdue pending requests across tenants by deadline.
CREATE INDEX approvals_by_deadline ON approval_requests (status, deadline);
