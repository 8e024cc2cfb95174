-- Conflict reports of replicated changes: log lines (shown here at NOTICE), the GUCs' values, and
-- the counters' fallback on this server, which does not preload mm_conflict.
CREATE TABLE c(id int PRIMARY KEY, info text,
               mm_islocal boolean, mm_nodeid int2, mm_last_xacttime timestamptz, mm_last_stattime timestamptz);
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE OR DELETE ON c
    FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, 'last_xacttime', 'last');
ALTER TABLE c ENABLE ALWAYS TRIGGER mm_resolve;
SET client_min_messages = notice;
-- Settings made before the library loads are taken over when it does.
SET mm_conflict.log_level = notice;
-- Replicated changes from here on.
SELECT pg_replication_origin_create('regress_conflicts') > 0 AS created;
SELECT pg_replication_origin_session_setup('regress_conflicts');
-- a new key: no conflict, no line
INSERT INTO c VALUES (1, 'from node 2', true, 2, '2030-01-01 00:00:00+00', '2030-01-01 00:00:00+00');
SHOW mm_conflict.log_conflicts;
SHOW mm_conflict.log_level;
-- an older version from node 3 loses: kept_local (without column values, by default)
UPDATE c SET info = 'older from node 3', mm_nodeid = 3,
             mm_last_xacttime = '2029-01-01 00:00:00+00', mm_last_stattime = '2029-01-01 00:00:00+00'
 WHERE id = 1;
-- with log_values, the line shows the key and both rows
SET mm_conflict.log_values = on;
UPDATE c SET info = 'older from node 3', mm_nodeid = 3,
             mm_last_xacttime = '2029-01-01 00:00:00+00', mm_last_stattime = '2029-01-01 00:00:00+00'
 WHERE id = 1;
-- a newer one from node 3 wins over node 2's row: applied; long values are cut in the line
UPDATE c SET info = repeat('x', 100), mm_nodeid = 3,
             mm_last_xacttime = '2031-01-01 00:00:00+00', mm_last_stattime = '2031-01-01 00:00:00+00'
 WHERE id = 1;
-- the same version again (a copy back around the mesh): no line
UPDATE c SET info = repeat('x', 100), mm_nodeid = 3,
             mm_last_xacttime = '2031-01-01 00:00:00+00', mm_last_stattime = '2031-01-01 00:00:00+00'
 WHERE id = 1;
-- off: no line
SET mm_conflict.log_conflicts = off;
UPDATE c SET info = 'older again', mm_nodeid = 2,
             mm_last_xacttime = '2029-01-01 00:00:00+00', mm_last_stattime = '2029-01-01 00:00:00+00'
 WHERE id = 1;
SELECT pg_replication_origin_session_reset();
SELECT id, left(info, 3) AS info, mm_nodeid FROM c;
SELECT count(*) AS log_rows FROM mm_conflict.conflict_log;
-- Bad values name the valid ones.
SET mm_conflict.log_conflicts = verbose;
SET mm_conflict.log_level = error;
RESET client_min_messages;
-- Without shared_preload_libraries the counters are not available, and say so.
SELECT table_name, applied, conflicts, note FROM mm_conflict.conflict_stats;
SELECT mm_conflict.reset_conflict_stats();
DROP TABLE c;
SELECT pg_replication_origin_drop('regress_conflicts');
