-- An address set by an admin (`agent add --address`) is pinned: the address
-- the agent reports when it connects no longer replaces it.
ALTER TABLE agents ADD COLUMN address_pinned BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE agents SET address_pinned = TRUE WHERE address IS NOT NULL AND last_seen IS NULL;
