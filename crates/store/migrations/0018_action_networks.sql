-- The network an approval request's action pays on (a CAIP-2 id such as `eip155:338`), as the rails resolved it
-- when it was filed or edited: part of the action's digest, so an approval binds the chain too. NULL for an
-- action no rail carries.
ALTER TABLE approval_requests ADD COLUMN network TEXT;
