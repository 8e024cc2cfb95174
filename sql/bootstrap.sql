-- mm_conflict bootstrap: the schema that holds the extension's helper functions and catalog.
-- The trigger function mm_resolve itself lives in the schema the extension is created in, so
-- that EXECUTE FUNCTION mm_resolve(...) resolves with the default search_path.
CREATE SCHEMA IF NOT EXISTS mm_conflict;
COMMENT ON SCHEMA mm_conflict IS 'mm_conflict: helper functions and catalog for multi-master conflict resolution';
-- Every role may use the schema: table_checksum (which checks the caller's rights on the table)
-- and the trigger's helpers need it. Tables and views here grant nothing to PUBLIC, and the
-- functions that change the mesh check for a superuser (see README "Roles and privileges").
GRANT USAGE ON SCHEMA mm_conflict TO PUBLIC;
