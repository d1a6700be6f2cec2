-- PostgreSQL runs its own version of this migration (migrations_postgres/0031_tenant_references.sql): it drops
-- the foreign keys to `tenants` of the tables every payment writes. SQLite keeps them: there the check is a
-- lookup in the same process.
SELECT 1;
