-- What a hostile role can try through mm_conflict, and what it gets: a SQLSTATE, never another
-- role's rights, never a crash. (README "Security".)
\set SHOW_CONTEXT never
SELECT mm_conflict.node_init(1, 'one') WHERE NOT EXISTS (SELECT 1 FROM mm_conflict.node);
CREATE ROLE mm_evil LOGIN;
CREATE ROLE mm_owner LOGIN;
-- The hostile role may create schemas in this database (as many applications' roles may).
SELECT format('GRANT CREATE ON DATABASE %I TO mm_evil', current_database()) \gexec

-- 1. Operator hijack. The role writes a replicated table; it puts an "=" of its own for text and
-- bytea first in its search_path, whose function makes it a superuser if run by one. mm_conflict
-- records and removes tombstones with the extension owner's rights: none of its statements may
-- resolve that operator.
CREATE TABLE s_acct(id int PRIMARY KEY, balance int);
SELECT mm_conflict.replicate_table('s_acct');
GRANT SELECT, INSERT, UPDATE, DELETE ON s_acct TO mm_evil;
SET ROLE mm_evil;
CREATE SCHEMA evil;
CREATE FUNCTION evil.eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        EXECUTE 'ALTER ROLE mm_evil SUPERUSER';
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE FUNCTION evil.eq(bytea, bytea) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        EXECUTE 'ALTER ROLE mm_evil SUPERUSER';
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.eq);
CREATE OPERATOR evil.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = evil.eq);
SET search_path = evil, pg_catalog, public;
INSERT INTO s_acct VALUES (1, 10), (2, 20);
DELETE FROM s_acct WHERE id = 1;
INSERT INTO s_acct VALUES (1, 11);
DELETE FROM s_acct WHERE id = 1;
DELETE FROM s_acct WHERE id = 2;
RESET search_path;
RESET ROLE;
SELECT rolsuper AS evil_is_superuser FROM pg_roles WHERE rolname = 'mm_evil';
SELECT count(*) AS tombstones FROM mm_conflict.tombstone WHERE table_name = 'public.s_acct';

-- A temporary table (never replicated) with mm_resolve records no tombstone: there is nothing a
-- peer could resolve it against.
SET ROLE mm_evil;
CREATE TEMP TABLE s_temp(id int PRIMARY KEY, mm_islocal boolean, mm_nodeid int2,
                         mm_last_xacttime timestamptz, mm_last_stattime timestamptz);
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE OR DELETE ON s_temp
    FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, 'last_xacttime', 'last');
INSERT INTO s_temp(id) VALUES (1), (2);
SET search_path = evil, pg_catalog, public;
DELETE FROM s_temp;
RESET search_path;
RESET ROLE;
SELECT rolsuper AS evil_is_superuser FROM pg_roles WHERE rolname = 'mm_evil';
SELECT count(*) AS tombstones_of_temp FROM mm_conflict.tombstone WHERE table_name LIKE '%s_temp%';

-- 2. The tombstone table's trigger functions fire only where CREATE EXTENSION put them. An
-- ordinary role may not attach them at all; attached elsewhere (by a superuser), they refuse
-- instead of reading the table's rows with the tombstone table's column numbers.
SET ROLE mm_evil;
CREATE TABLE evil.t2(a int, b text);
CREATE TRIGGER x BEFORE INSERT ON evil.t2 FOR EACH ROW EXECUTE FUNCTION mm_conflict.tombstone_resolve();
\echo :LAST_ERROR_SQLSTATE
CREATE TRIGGER x AFTER INSERT ON evil.t2 FOR EACH ROW EXECUTE FUNCTION mm_conflict.tombstone_settle();
\echo :LAST_ERROR_SQLSTATE
-- truncate_guard may be attached (replicate_table does, as the table's owner), but only as what
-- it is: as a row trigger it would skip every row.
CREATE TRIGGER x BEFORE INSERT ON evil.t2 FOR EACH ROW EXECUTE FUNCTION mm_conflict.truncate_guard();
INSERT INTO evil.t2 VALUES (1, 'x');
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER x ON evil.t2;
RESET ROLE;
CREATE TABLE s_wrong(a int, b text);
CREATE TRIGGER r BEFORE INSERT ON s_wrong FOR EACH ROW EXECUTE FUNCTION mm_conflict.tombstone_resolve();
CREATE TRIGGER s AFTER INSERT ON s_wrong FOR EACH ROW EXECUTE FUNCTION mm_conflict.tombstone_settle();
ALTER TABLE s_wrong ENABLE ALWAYS TRIGGER r, ENABLE ALWAYS TRIGGER s;
INSERT INTO s_wrong VALUES (1, 'x');
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE s_wrong DISABLE TRIGGER r;
SELECT pg_replication_origin_create('regress_security') > 0 AS created;
SELECT pg_replication_origin_session_setup('regress_security');
INSERT INTO s_wrong VALUES (1, 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_replication_origin_session_reset();
-- The tombstone table's own triggers fire at the wrong time when moved there by hand.
CREATE TRIGGER wrong_time AFTER INSERT ON mm_conflict.tombstone FOR EACH ROW EXECUTE FUNCTION mm_conflict.tombstone_resolve();
INSERT INTO mm_conflict.tombstone(table_name, pk, order_last) VALUES ('public.none', '\x00', true);
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER wrong_time ON mm_conflict.tombstone;
DROP TABLE s_wrong;

-- 3. mm_conflict's own writes to a table run as the table's owner (as PostgreSQL 16's apply
-- workers write), whoever caused them: here a superuser's apply session settles a replicated
-- tombstone, which deletes the owner's row, and an ENABLE ALWAYS trigger of the owner's sees who
-- runs it.
CREATE TABLE s_owned(id int PRIMARY KEY, v text);
ALTER TABLE s_owned OWNER TO mm_owner;
SELECT mm_conflict.replicate_table('s_owned');
CREATE TABLE s_who(event text, who name);
GRANT INSERT ON s_who TO PUBLIC;
CREATE FUNCTION s_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.s_who VALUES (TG_OP, current_user);
    RETURN NULL;
END $$;
SET ROLE mm_owner;
CREATE TRIGGER record AFTER INSERT OR UPDATE OR DELETE ON s_owned FOR EACH ROW EXECUTE FUNCTION public.s_record();
ALTER TABLE s_owned ENABLE ALWAYS TRIGGER record;
INSERT INTO s_owned VALUES (1, 'a');
RESET ROLE;
TRUNCATE s_who;
-- The row of key 1 (binary form: length 4, then 1) meets an older tombstone from node 2, which it
-- beats: it is re-sent (deleted and inserted again as mm_conflict's own write). Then a newer one
-- deletes it.
SELECT pg_replication_origin_session_setup('regress_security');
INSERT INTO mm_conflict.tombstone(table_name, pk, criterion, mm_last_stattime, mm_nodeid,
                                  mm_last_xacttime, order_last)
VALUES ('public.s_owned', '\x0000000400000001', '2000-01-01', '2000-01-01', 2, '2000-01-01', true);
SELECT id, v FROM s_owned ORDER BY id;
INSERT INTO mm_conflict.tombstone(table_name, pk, criterion, mm_last_stattime, mm_nodeid,
                                  mm_last_xacttime, order_last)
VALUES ('public.s_owned', '\x0000000400000001', '2100-01-01', '2100-01-01', 2, '2100-01-01', true);
SELECT pg_replication_origin_session_reset();
SELECT id FROM s_owned ORDER BY id;
SELECT event, who FROM s_who ORDER BY event, who;
TRUNCATE s_who;
-- A superuser's repair writes as the owner too.
SELECT mm_conflict._repair_apply('s_owned',
    '[{"row": {"id": 5, "v": "repaired", "mm_islocal": false, "mm_nodeid": 2, "mm_last_xacttime": "2100-01-01 00:00:00+00", "mm_last_stattime": "2100-01-01 00:00:00+00"}}]',
    false);
SELECT event, who FROM s_who ORDER BY event, who;

-- 5. A replicated tombstone this node cannot resolve is a WARNING and a conflict_log row, never
-- an error that would stop the apply worker: one that names an index, and one whose key is not
-- the table's key.
SELECT pg_replication_origin_session_setup('regress_security');
INSERT INTO mm_conflict.tombstone(table_name, pk, criterion, mm_last_stattime, mm_nodeid,
                                  mm_last_xacttime, order_last)
VALUES ('public.s_owned_pkey', '\x0000000400000001', '2100-01-01', '2100-01-01', 2, '2100-01-01', true);
INSERT INTO mm_conflict.tombstone(table_name, pk, criterion, mm_last_stattime, mm_nodeid,
                                  mm_last_xacttime, order_last)
VALUES ('public.s_owned', '\x00000003000001', '2100-01-01', '2100-01-01', 2, '2100-01-01', true);
INSERT INTO mm_conflict.tombstone(table_name, pk, criterion, mm_last_stattime, mm_nodeid,
                                  mm_last_xacttime, order_last)
VALUES ('public.s_owned', '\x00000004000000010000', '2100-01-01', '2100-01-01', 2, '2100-01-01', true);
SELECT pg_replication_origin_session_reset();
SELECT table_name, key, decision, incoming_node, detail FROM mm_conflict.conflict_log
 WHERE decision = 'tombstone_ignored' ORDER BY id;

-- 8. Bookkeeping columns with a precision would be rounded on the peers' input but not here.
CREATE TABLE s_precise(id int PRIMARY KEY, mm_islocal boolean, mm_nodeid int2,
                       mm_last_xacttime timestamptz(3), mm_last_stattime timestamptz);
SELECT mm_conflict.replicate_table('s_precise');
\echo :LAST_ERROR_SQLSTATE
DROP TABLE s_precise;

-- 9. purge_tombstones waits only for the subscriptions that carry tombstones: a disabled
-- subscription of something else does not hold it back.
SET client_min_messages = error;
CREATE SUBSCRIPTION s_unrelated CONNECTION 'host=127.0.0.1 port=1 dbname=none' PUBLICATION nothing
    WITH (connect = false, enabled = false, slot_name = NONE);
RESET client_min_messages;
SELECT count(*) > 0 AS has_tombstones FROM mm_conflict.tombstone;
SELECT mm_conflict.purge_tombstones('0 seconds') > 0 AS purged;
DROP SUBSCRIPTION s_unrelated;

-- Every function of the extension, called by an ordinary role and by a superuser with NULLs and
-- with hostile values of each argument's type: a SQLSTATE each, never XX000 (internal error), and
-- the session survives (a crash would end this file's output here).
CREATE TABLE s_calls(role name, function text, args text, sqlstate text, message text);
GRANT INSERT ON s_calls TO PUBLIC;
CREATE FUNCTION s_call_everything() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    f record;
    pattern int;
    args text[];
    t oid;
    call text;
    state text;
    message text;
BEGIN
    FOR f IN
        SELECT p.oid, p.oid::regprocedure AS name, p.proargtypes::oid[] AS types, p.prorettype
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
         WHERE d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'mm_conflict')
           AND d.deptype = 'e'
           AND p.prorettype NOT IN ('pg_catalog.trigger'::regtype, 'pg_catalog.event_trigger'::regtype)
           -- raises the SQLSTATE it is given, by design
           AND p.proname <> '_raise'
         ORDER BY p.oid::regprocedure::text
    LOOP
        FOR pattern IN 0..2 LOOP
            args := '{}';
            FOREACH t IN ARRAY f.types LOOP
                args := args || (CASE
                    WHEN pattern = 0 THEN 'NULL'
                    WHEN t IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) THEN
                        CASE pattern WHEN 1 THEN '-1' ELSE '32767' END
                    WHEN t = 'regclass'::regtype THEN
                        CASE pattern WHEN 1 THEN '''pg_catalog.pg_class''' ELSE '''mm_conflict.tombstone''' END
                    WHEN t = 'oid'::regtype THEN CASE pattern WHEN 1 THEN '0' ELSE '4294967295' END
                    WHEN t IN ('text'::regtype, 'name'::regtype) THEN
                        CASE pattern WHEN 1 THEN '''x''''; select 1; --''' ELSE 'repeat(''x'', 100000)' END
                    WHEN t = 'jsonb'::regtype THEN CASE pattern WHEN 1 THEN '''[]''' ELSE '''{"error": "internal", "what": 1}''' END
                    WHEN t = 'bytea'::regtype THEN CASE pattern WHEN 1 THEN '''\xff''' ELSE 'decode(repeat(''ff'', 100000), ''hex'')' END
                    WHEN t = 'boolean'::regtype THEN 'true'
                    WHEN t = 'interval'::regtype THEN CASE pattern WHEN 1 THEN '''-1 day''' ELSE '''1 millisecond''' END
                    WHEN t = 'bytea[]'::regtype THEN CASE pattern WHEN 1 THEN '''{}''' ELSE 'ARRAY[''\x00''::bytea, NULL]' END
                    WHEN t = 'text[]'::regtype THEN CASE pattern WHEN 1 THEN '''{}''' ELSE 'ARRAY[NULL, ''x'']' END
                    WHEN t = 'int4[]'::regtype THEN CASE pattern WHEN 1 THEN '''{}''' ELSE 'ARRAY[-1, NULL]' END
                    WHEN t = 'int8[]'::regtype THEN CASE pattern WHEN 1 THEN '''{}''' ELSE 'ARRAY[-1, NULL]' END
                    ELSE 'NULL'
                END || '::' || t::regtype::text);
            END LOOP;
            call := format('SELECT %s(%s)', f.oid::regproc, array_to_string(args, ', '));
            IF f.prorettype <> 'pg_catalog.void'::regtype
               AND (SELECT proretset FROM pg_catalog.pg_proc WHERE oid = f.oid) THEN
                call := format('SELECT * FROM %s(%s)', f.oid::regproc, array_to_string(args, ', '));
            END IF;
            state := '00000';
            message := NULL;
            BEGIN
                EXECUTE call;
            EXCEPTION WHEN OTHERS THEN
                state := SQLSTATE;
                message := SQLERRM;
            END;
            INSERT INTO public.s_calls VALUES (current_user, f.name::text, pattern::text, state, message);
        END LOOP;
    END LOOP;
END
$$;
SET client_min_messages = error;
SET ROLE mm_evil;
SELECT s_call_everything();
RESET ROLE;
SELECT s_call_everything();
RESET client_min_messages;
SELECT count(DISTINCT function) > 40 AS functions_called, count(*) > 200 AS calls FROM s_calls;
-- No internal error anywhere, and the ordinary role gained nothing.
SELECT role, function, args, sqlstate, message FROM s_calls WHERE sqlstate LIKE 'XX%' ORDER BY 1, 2, 3;
SELECT rolsuper AS evil_is_superuser FROM pg_roles WHERE rolname = 'mm_evil';

-- Leave no mesh behind for the next test.
SELECT mm_conflict.drop_mesh();
SELECT pg_replication_origin_drop('regress_security');
DROP TABLE s_acct, s_owned, s_who, s_calls;
DROP FUNCTION s_record(), s_call_everything();
DELETE FROM mm_conflict.tombstone;
DELETE FROM mm_conflict.conflict_log;
DROP OWNED BY mm_evil;
DROP OWNED BY mm_owner;
DROP ROLE mm_evil;
DROP ROLE mm_owner;
