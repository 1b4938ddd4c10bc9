-- Identifiers compare as bytes (collation "C").
--
-- External ids, aliases and device ids are opaque strings matched exactly; their order
-- only has to be stable. Under the database's default collation every comparison in
-- their unique indexes goes through the C library's strcoll (and PostgreSQL turns off
-- abbreviated sort keys for it); under "C" it is a memcmp. Loading a million users
-- measured ~10% faster on the external id index alone. Under a C.UTF-8 or C database
-- locale the order is the same code-point order as before; under any other it becomes
-- code-point order, the same on every machine.

ALTER TABLE users ALTER COLUMN external_id TYPE text COLLATE "C";
ALTER TABLE user_aliases ALTER COLUMN alias_label TYPE text COLLATE "C",
                         ALTER COLUMN alias_name TYPE text COLLATE "C";
ALTER TABLE user_device_ids ALTER COLUMN device_id TYPE text COLLATE "C";
