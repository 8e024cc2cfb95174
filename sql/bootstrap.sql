-- mm_conflict bootstrap: the schema that holds the extension's helper functions and catalog.
-- The trigger function mm_resolve itself lives in the schema the extension is created in, so
-- that EXECUTE FUNCTION mm_resolve(...) resolves with the default search_path.
CREATE SCHEMA IF NOT EXISTS mm_conflict;
COMMENT ON SCHEMA mm_conflict IS 'mm_conflict: helper functions and catalog for multi-master conflict resolution';
