-- The unique indexes of external ids and aliases also carry the user they belong to
-- (INCLUDE), so that resolving an import's identifiers reads only the index. An index
-- scan fetched each user's heap row for its id alone: a random page of a table larger
-- than stock shared_buffers. For 700 external ids and 200 aliases of a 1M-user workspace,
-- 3,600 buffer reads became 2,700 and the misses 1,900 became 1,070 (BENCHMARKS.md §2).
-- Costs 8 bytes an index entry.
--
-- Device ids stay as they are: resolving one reads its user's row anyway, to check that
-- the user is anonymous.

ALTER TABLE users
    DROP CONSTRAINT users_workspace_id_external_id_key,
    ADD CONSTRAINT users_workspace_id_external_id_key UNIQUE (workspace_id, external_id) INCLUDE (id);
ALTER TABLE user_aliases
    DROP CONSTRAINT user_aliases_pkey,
    ADD CONSTRAINT user_aliases_pkey PRIMARY KEY (workspace_id, alias_label, alias_name) INCLUDE (user_id);
