-- Roles, TRUNCATE, subtransactions, identifiers, settings: what ordinary applications and
-- sessions meet on a replicated table.
\set SHOW_CONTEXT never
SELECT mm_conflict.node_init(1, 'one') WHERE NOT EXISTS (SELECT 1 FROM mm_conflict.node);
CREATE TABLE h_acct(id int PRIMARY KEY, balance int);
SELECT mm_conflict.replicate_table('h_acct');

-- NULL arguments are errors, not shifted trigger arguments.
SELECT mm_conflict.replicate_table('h_acct', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table('h_acct', 'last_xacttime', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT mm_conflict.replicate_table(NULL);
\echo :LAST_ERROR_SQLSTATE

-- An ordinary application role with ordinary privileges writes the table; its deletes record
-- tombstones (with the extension's rights, not its own) ...
CREATE ROLE mm_app LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON h_acct TO mm_app;
SET ROLE mm_app;
INSERT INTO h_acct(id, balance) VALUES (1, 10), (2, 20), (3, 30);
UPDATE h_acct SET balance = balance + 1 WHERE id = 2;
DELETE FROM h_acct WHERE id = 3;
SELECT id, balance, mm_islocal, mm_nodeid FROM h_acct ORDER BY id;
-- ... but cannot write (or read) tombstones or the conflict log directly.
INSERT INTO mm_conflict.tombstone(table_name, pk, order_last) VALUES ('public.h_acct', '\x00', true);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM mm_conflict.conflict_log;
\echo :LAST_ERROR_SQLSTATE
-- TRUNCATE of a replicated table is refused, with the supported way in the HINT.
RESET ROLE;
GRANT TRUNCATE ON h_acct TO mm_app;
SET ROLE mm_app;
TRUNCATE h_acct;
\echo :LAST_ERROR_SQLSTATE
-- apply (diverge on purpose) is for superusers only; the other values are for everyone.
SET mm_conflict.local_conflict = apply;
\echo :LAST_ERROR_SQLSTATE
SET mm_conflict.local_conflict = skip;
SHOW mm_conflict.local_conflict;
RESET ROLE;
SET mm_conflict.local_conflict = apply;
SHOW mm_conflict.local_conflict;
RESET mm_conflict.local_conflict;
SELECT table_name, encode(pk, 'hex') AS pk, mm_nodeid FROM mm_conflict.tombstone WHERE table_name = 'public.h_acct';

-- A table owned by an ordinary role works the same (PostgreSQL 16+ applies replicated changes as
-- the table's owner).
CREATE TABLE h_owned(id int PRIMARY KEY, v text);
ALTER TABLE h_owned OWNER TO mm_app;
SELECT mm_conflict.replicate_table('h_owned');
SET ROLE mm_app;
INSERT INTO h_owned VALUES (1, 'a'), (2, 'b');
DELETE FROM h_owned WHERE id = 1;
RESET ROLE;
SELECT table_name, mm_nodeid FROM mm_conflict.tombstone WHERE table_name = 'public.h_owned';

-- Tombstones name their table the same way whatever quote_all_identifiers says.
SET quote_all_identifiers = on;
DELETE FROM h_acct WHERE id = 1;
RESET quote_all_identifiers;
SELECT DISTINCT table_name FROM mm_conflict.tombstone WHERE table_name LIKE '%h_acct%';
CREATE TABLE "H Odd"(id int);
CREATE TABLE "user"(id int);
SELECT mm_conflict._table_name('h_acct'), mm_conflict._table_name('"H Odd"'), mm_conflict._table_name('"user"');
DROP TABLE "H Odd", "user";

-- A million single-row inserts, each in its own subtransaction, never pile up key locks (here
-- 20,000, checking every 1,000): each is released at the end of the INSERT that took it.
DO $$
DECLARE
    most int := 0;
BEGIN
    FOR i IN 1..20000 LOOP
        BEGIN
            INSERT INTO h_acct(id, balance) VALUES (1000 + i, i);
        EXCEPTION WHEN unique_violation THEN
            NULL;
        END;
        IF i % 1000 = 0 THEN
            most := greatest(most, (SELECT count(*) FROM pg_locks
                                     WHERE pid = pg_backend_pid() AND locktype = 'advisory'
                                       AND objsubid = 19789)::int);
        END IF;
    END LOOP;
    RAISE WARNING 'key locks held at once, at most: %', most;
END
$$;
SELECT count(*) FROM h_acct;

-- table_checksum reads every row: where row-level security hides rows from a role, it refuses.
ALTER TABLE h_acct ENABLE ROW LEVEL SECURITY;
CREATE POLICY h_some ON h_acct TO mm_app USING (id < 10);
SET ROLE mm_app;
SELECT mm_conflict.table_checksum('h_acct');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT mm_conflict.table_checksum('h_acct') IS NOT NULL AS owner_can;

-- A NULL in a key column of a row about to be written: PostgreSQL checks NOT NULL only after the
-- BEFORE triggers, and mm_resolve reads the key first. Refused with PostgreSQL's own SQLSTATE
-- (the binary form of a text key read from NULL once crashed the backend).
CREATE TABLE h_textkey(id text PRIMARY KEY, n int);
SELECT mm_conflict.replicate_table('h_textkey');
INSERT INTO h_textkey VALUES (NULL, 1);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO h_textkey VALUES ('a', 1);
-- (An UPDATE's key is its stored row's: PostgreSQL's own check refuses the NULL. Terse: its
-- DETAIL shows the row's stamps.)
\set VERBOSITY terse
UPDATE h_textkey SET id = NULL WHERE id = 'a';
\set VERBOSITY default
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE h_twokey(a int, b text, PRIMARY KEY (a, b));
SELECT mm_conflict.replicate_table('h_twokey');
INSERT INTO h_twokey(a, b) VALUES (1, NULL);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO h_twokey(a, b) VALUES (NULL, 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT id, n FROM h_textkey;
SELECT count(*) FROM h_twokey;
DROP TABLE h_textkey, h_twokey;

-- Leave no mesh behind for the next test.
SELECT mm_conflict.drop_mesh();
DROP TABLE h_acct, h_owned;
DELETE FROM mm_conflict.tombstone;
DROP OWNED BY mm_app;
DROP ROLE mm_app;
