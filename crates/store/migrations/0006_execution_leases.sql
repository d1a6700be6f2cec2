-- An execution is run by the instance holding its lease, renewed while it runs. When an instance dies, its
-- leases expire and another instance takes the executions over, one claim each.
ALTER TABLE executions ADD COLUMN lease_owner TEXT;
ALTER TABLE executions ADD COLUMN lease_until TEXT;
