-- The messages a user sees when mm_resolve is set up or used wrongly, with their SQLSTATEs.
\set SHOW_CONTEXT never
CREATE TABLE mm(id int PRIMARY KEY, info text, mod_time timestamp,
                mm_islocal boolean, mm_nodeid int2, mm_last_xacttime timestamp, mm_last_stattime timestamp);

-- wrong argument count
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, last_xacttime);
INSERT INTO mm(id) VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER mm_resolve ON mm;

-- node id not an integer, out of range
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(one, last_xacttime, last, 2);
INSERT INTO mm(id) VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER mm_resolve ON mm;
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, last_xacttime, last, 99999);
INSERT INTO mm(id) VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER mm_resolve ON mm;

-- first/last misspelled
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, last_xacttime, latest, 2);
INSERT INTO mm(id) VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER mm_resolve ON mm;

-- unknown criterion column, and a column of the wrong type
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, modtime, last, 2);
INSERT INTO mm(id) VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER mm_resolve ON mm;
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, info, last, 2);
INSERT INTO mm(id) VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER mm_resolve ON mm;

-- missing bookkeeping column: the hint says what to run
ALTER TABLE mm DROP COLUMN mm_islocal;
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, last_xacttime, last, 2);
INSERT INTO mm(id) VALUES (1);
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE mm ADD COLUMN mm_islocal boolean;

-- wrong kind of trigger
CREATE TRIGGER mm_after AFTER INSERT ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, last_xacttime, last, 2);
INSERT INTO mm(id) VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER mm_after ON mm;

-- A local update that would lose everywhere else. The stored row came from node 2 with stamps in
-- 2100, so the local write is stamped just above them (stored + 1 microsecond).
SELECT pg_replication_origin_create('regress_peer') > 0 AS created;
DROP TRIGGER mm_resolve ON mm;
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, mod_time, last, 2);
SELECT pg_replication_origin_session_setup('regress_peer');
INSERT INTO mm(id, info, mod_time, mm_islocal, mm_nodeid, mm_last_xacttime, mm_last_stattime)
    VALUES (1, 'a', '2020-01-01 00:00:00', true, 2, '2100-01-01 00:00:00', '2100-01-01 00:00:00');
SELECT pg_replication_origin_session_reset();
UPDATE mm SET info = 'b', mod_time = '2019-06-01 12:00:00' WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
SET mm_conflict.local_conflict = skip;
UPDATE mm SET info = 'b', mod_time = '2019-06-01 12:00:00' WHERE id = 1;
SELECT id, info, mod_time, mm_islocal, mm_nodeid FROM mm;
RESET mm_conflict.local_conflict;
SET mm_conflict.local_conflict = sometimes;

-- first mode
DROP TRIGGER mm_resolve ON mm;
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, last_xacttime, first, 2);
UPDATE mm SET info = 'c' WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE

-- first mode refuses deletes too (a delete is a versioned write when the trigger covers DELETE)
DROP TRIGGER mm_resolve ON mm;
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE OR DELETE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, last_xacttime, first, 2);
DELETE FROM mm WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE

-- nodeid mode: node 2 owns the rows it wrote last
DROP TRIGGER mm_resolve ON mm;
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, nodeid, 2);
UPDATE mm SET info = 'd' WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE

-- a replicated insert into a table without a primary key
CREATE TABLE nopk(id int, mm_islocal boolean, mm_nodeid int2, mm_last_xacttime timestamptz, mm_last_stattime timestamptz);
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON nopk FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, last_xacttime, last, 2);
SELECT pg_replication_origin_session_setup('regress_peer');
INSERT INTO nopk VALUES (1, true, 2, now(), now());
\echo :LAST_ERROR_SQLSTATE
SELECT pg_replication_origin_session_reset();
SELECT pg_replication_origin_drop('regress_peer');

DROP TABLE mm, nopk;
