-- Runs first, in a fresh database: the extension installs and reports its version.
CREATE EXTENSION mm_conflict;
SELECT extname, extversion, extversion = mm_conflict.version() AS matches_library,
       extrelocatable
  FROM pg_extension WHERE extname = 'mm_conflict';
-- mm_resolve lives in the extension's schema and resolves with the default search_path.
SELECT p.oid::regprocedure AS trigger_function, n.nspname
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.proname = 'mm_resolve';
