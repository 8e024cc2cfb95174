//! `#[pg_test]`s: the trigger's rules and errors inside one real server. Replicated application is
//! simulated by setting up a replication origin in the session, which is exactly what tells
//! `mm_resolve` that it runs in an apply worker.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Creates the article's table with the trigger and a helper that returns the SQLSTATE a
    /// statement fails with (NULL when it succeeds).
    fn setup(trigger_args: &str) {
        Spi::run(&format!(
            "CREATE TABLE mm(id int PRIMARY KEY, info text, mod_time timestamp,
                 mm_islocal boolean, mm_nodeid int2, mm_last_xacttime timestamp, mm_last_stattime timestamp);
             CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE OR DELETE ON mm
                 FOR EACH ROW EXECUTE FUNCTION mm_resolve({trigger_args});
             ALTER TABLE mm ENABLE ALWAYS TRIGGER mm_resolve;
             CREATE PUBLICATION mm_test FOR TABLE mm;
             CREATE FUNCTION pg_temp.sqlstate_of(stmt text) RETURNS text LANGUAGE plpgsql AS $f$
             BEGIN EXECUTE stmt; RETURN NULL; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $f$;"
        ))
        .unwrap();
    }

    fn sqlstate_of(stmt: &str) -> Option<String> {
        Spi::get_one_with_args::<String>("SELECT pg_temp.sqlstate_of($1)", &[stmt.into()]).unwrap()
    }

    fn one<T: FromDatum + IntoDatum>(query: &str) -> T {
        Spi::get_one::<T>(query).unwrap().expect("a non-NULL value")
    }

    /// Runs `sql` as if an apply worker were applying it (a replication origin is set up).
    fn replicated(sql: &str) {
        Spi::run(
            "SELECT pg_replication_origin_create('mm_test_peer')
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = 'mm_test_peer');
             SELECT pg_replication_origin_session_setup('mm_test_peer');",
        )
        .unwrap();
        let result = Spi::run(sql);
        Spi::run("SELECT pg_replication_origin_session_reset()").unwrap();
        result.unwrap();
    }

    fn row(id: i32) -> String {
        one::<String>(&format!(
            "SELECT concat_ws('|', info, mm_islocal, mm_nodeid, mm_last_xacttime, mm_last_stattime) FROM mm WHERE id = {id}"
        ))
    }

    // ---- errors --------------------------------------------------------------------------

    /// The error path raises a real SQLSTATE from inside the trigger, not pgrx's XX000.
    #[pg_test]
    fn error_from_trigger_has_its_sqlstate() {
        setup("1, 'last_xacttime', 'last', 2");
        Spi::run("ALTER TABLE mm DROP COLUMN mm_nodeid").unwrap();
        assert_eq!(
            sqlstate_of("INSERT INTO mm(id) VALUES (1)").as_deref(),
            Some("42703")
        );
    }

    #[pg_test]
    fn bad_trigger_arguments_have_specific_sqlstates() {
        setup("1, 'last_xacttime', 'last', 2");
        let cases = [
            ("1, 'last_xacttime'", "22023"),
            ("1", "22023"),
            ("'one', 'last_xacttime', 'last', 2", "22P02"),
            ("0, 'last_xacttime', 'last', 2", "22003"),
            ("1, 'last_xacttime', 'last', 40000", "22003"),
            ("1, 'nodeid', 'x'", "22P02"),
            ("1, 'last_xacttime', 'lastt', 2", "22023"),
            ("1, 'no_such_column', 'last', 2", "42703"),
            ("1, 'info', 'last', 2", "42804"),
        ];
        for (args, expected) in cases {
            Spi::run(&format!(
                "DROP TRIGGER mm_resolve ON mm;
                 CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve({args});"
            ))
            .unwrap();
            assert_eq!(
                sqlstate_of("INSERT INTO mm(id) VALUES (1)").as_deref(),
                Some(expected),
                "arguments ({args})"
            );
            assert_eq!(
                one::<i64>("SELECT count(*) FROM mm"),
                0,
                "nothing applied for ({args})"
            );
        }
    }

    #[pg_test]
    fn bookkeeping_columns_are_checked() {
        setup("1, 'last_xacttime', 'last', 2");
        Spi::run("ALTER TABLE mm ALTER COLUMN mm_nodeid TYPE int4").unwrap();
        assert_eq!(
            sqlstate_of("INSERT INTO mm(id) VALUES (1)").as_deref(),
            Some("42804")
        );
        Spi::run("ALTER TABLE mm ALTER COLUMN mm_nodeid TYPE int2; ALTER TABLE mm DROP COLUMN mm_last_stattime")
            .unwrap();
        assert_eq!(
            sqlstate_of("INSERT INTO mm(id) VALUES (1)").as_deref(),
            Some("42703")
        );
        Spi::run("ALTER TABLE mm ADD COLUMN mm_last_stattime timestamptz").unwrap();
        assert_eq!(
            sqlstate_of("INSERT INTO mm(id) VALUES (1)"),
            None,
            "timestamptz is accepted"
        );
    }

    #[pg_test]
    fn wrong_trigger_kinds_are_refused() {
        setup("1, 'last_xacttime', 'last', 2");
        Spi::run("INSERT INTO mm(id) VALUES (1)").unwrap();
        let kinds = [
            (
                "AFTER INSERT",
                "FOR EACH ROW",
                "INSERT INTO mm(id) VALUES (2)",
            ),
            (
                "BEFORE INSERT",
                "FOR EACH STATEMENT",
                "INSERT INTO mm(id) VALUES (2)",
            ),
            (
                "AFTER DELETE",
                "FOR EACH ROW",
                "DELETE FROM mm WHERE id = 1",
            ),
            ("BEFORE TRUNCATE", "FOR EACH STATEMENT", "TRUNCATE mm"),
        ];
        for (when, level, stmt) in kinds {
            Spi::run(&format!(
                "CREATE TRIGGER wrong {when} ON mm {level} EXECUTE FUNCTION mm_resolve(1, 'last_xacttime', 'last', 2)"
            ))
            .unwrap();
            assert_eq!(
                sqlstate_of(stmt).as_deref(),
                Some("39P01"),
                "{when} {level}"
            );
            Spi::run("DROP TRIGGER wrong ON mm").unwrap();
        }
        assert_eq!(one::<i64>("SELECT count(*) FROM mm"), 1);
    }

    #[pg_test]
    fn replicated_insert_needs_a_primary_key() {
        setup("1, 'last_xacttime', 'last', 2");
        Spi::run("ALTER TABLE mm DROP CONSTRAINT mm_pkey").unwrap();
        Spi::run("INSERT INTO mm(id) VALUES (1)").unwrap(); // local inserts do not need it
        Spi::run(
            "SELECT pg_replication_origin_create('mm_test_peer');
             SELECT pg_replication_origin_session_setup('mm_test_peer');",
        )
        .unwrap();
        let state = sqlstate_of("INSERT INTO mm VALUES (2, 'x', now(), true, 2, now(), now())");
        Spi::run("SELECT pg_replication_origin_session_reset()").unwrap();
        assert_eq!(state.as_deref(), Some("55000"));
    }

    // ---- local writes --------------------------------------------------------------------

    #[pg_test]
    fn local_insert_is_stamped() {
        setup("7, 'last_xacttime', 'last', 2");
        Spi::run("INSERT INTO mm(id, info, mm_islocal, mm_nodeid) VALUES (1, 'a', false, 3)")
            .unwrap();
        assert!(one::<bool>(
            "SELECT mm_islocal AND mm_nodeid = 7
                    AND mm_last_xacttime = now() AT TIME ZONE 'UTC'
                    AND mm_last_stattime >= mm_last_xacttime
             FROM mm WHERE id = 1"
        ));
    }

    #[pg_test]
    fn local_update_supersedes_a_row_from_a_clock_ahead() {
        setup("1, 'last_xacttime', 'last', 2");
        replicated("INSERT INTO mm VALUES (1, 'future', now(), true, 2, '2100-01-01', '2100-01-01 00:00:05')");
        Spi::run("UPDATE mm SET info = 'local' WHERE id = 1").unwrap();
        assert_eq!(
            row(1),
            "local|t|1|2100-01-01 00:00:00.000001|2100-01-01 00:00:05.000001"
        );
    }

    #[pg_test]
    fn local_update_with_older_user_column_follows_local_conflict() {
        setup("1, 'mod_time', 'last', 2");
        Spi::run("INSERT INTO mm(id, info, mod_time) VALUES (1, 'a', '2020-01-01')").unwrap();
        let older = "UPDATE mm SET info = 'older', mod_time = '2019-01-01' WHERE id = 1";
        assert_eq!(sqlstate_of(older).as_deref(), Some("27000"));
        Spi::run("SET LOCAL mm_conflict.local_conflict = skip").unwrap();
        Spi::run(older).unwrap();
        assert_eq!(one::<String>("SELECT info FROM mm WHERE id = 1"), "a");
        Spi::run("SET LOCAL mm_conflict.local_conflict = apply").unwrap();
        Spi::run(older).unwrap();
        assert_eq!(one::<String>("SELECT info FROM mm WHERE id = 1"), "older");
        Spi::run("SET LOCAL mm_conflict.local_conflict = error").unwrap();
        // Equal user value: the fresh stattime decides, so the update wins.
        Spi::run("UPDATE mm SET info = 'same time' WHERE id = 1").unwrap();
        assert_eq!(
            one::<String>("SELECT info FROM mm WHERE id = 1"),
            "same time"
        );
    }

    #[pg_test]
    fn first_mode_refuses_updates() {
        setup("1, 'last_xacttime', 'first', 2");
        Spi::run("INSERT INTO mm(id, info) VALUES (1, 'a')").unwrap();
        assert_eq!(
            sqlstate_of("UPDATE mm SET info = 'b' WHERE id = 1").as_deref(),
            Some("27000")
        );
    }

    #[pg_test]
    fn nodeid_mode_protects_the_winners_rows() {
        setup("1, 'nodeid', 3");
        replicated(
            "INSERT INTO mm VALUES (1, 'from 3', now(), true, 3, '2020-01-01', '2020-01-01');
             INSERT INTO mm VALUES (2, 'from 2', now(), true, 2, '2020-01-01', '2020-01-01');",
        );
        assert_eq!(
            sqlstate_of("UPDATE mm SET info = 'x' WHERE id = 1").as_deref(),
            Some("27000")
        );
        Spi::run("UPDATE mm SET info = 'x' WHERE id = 2").unwrap();
        assert_eq!(
            row(2).split('|').take(3).collect::<Vec<_>>(),
            ["x", "t", "1"]
        );
        // A replicated newer write of a non-winner does not beat the winner's row either.
        replicated("UPDATE mm SET info = 'later from 2', mm_nodeid = 2, mm_last_xacttime = '2030-01-01' WHERE id = 1");
        assert_eq!(one::<String>("SELECT info FROM mm WHERE id = 1"), "from 3");
    }

    #[pg_test]
    fn upsert_goes_through_the_update_rules() {
        setup("1, 'last_xacttime', 'last', 2");
        Spi::run("INSERT INTO mm(id, info) VALUES (1, 'a')").unwrap();
        Spi::run("INSERT INTO mm(id, info) VALUES (1, 'b') ON CONFLICT (id) DO UPDATE SET info = excluded.info").unwrap();
        assert_eq!(one::<String>("SELECT info FROM mm WHERE id = 1"), "b");
        assert!(one::<bool>(
            "SELECT mm_last_xacttime > now() AT TIME ZONE 'UTC' FROM mm WHERE id = 1"
        ));
    }

    // ---- replicated writes ---------------------------------------------------------------

    #[pg_test]
    fn replicated_update_applies_only_a_better_version() {
        setup("1, 'last_xacttime', 'last', 2");
        replicated("INSERT INTO mm VALUES (1, 'v1', now(), true, 3, '2020-01-01', '2020-01-01')");
        assert_eq!(row(1), "v1|f|3|2020-01-01 00:00:00|2020-01-01 00:00:00");
        // older: skipped
        replicated("UPDATE mm SET info = 'old', mm_last_xacttime = '2019-01-01' WHERE id = 1");
        assert_eq!(one::<String>("SELECT info FROM mm WHERE id = 1"), "v1");
        // the same version coming back around the mesh: skipped, no new row version
        let xmin = one::<String>("SELECT xmin::text FROM mm WHERE id = 1");
        replicated("UPDATE mm SET info = 'echo' WHERE id = 1");
        assert_eq!(one::<String>("SELECT info FROM mm WHERE id = 1"), "v1");
        assert_eq!(
            one::<String>("SELECT xmin::text FROM mm WHERE id = 1"),
            xmin
        );
        // newer: applied, never re-stamped, marked as not local
        replicated("UPDATE mm SET info = 'v2', mm_islocal = true, mm_nodeid = 3, mm_last_xacttime = '2021-01-01' WHERE id = 1");
        assert_eq!(row(1), "v2|f|3|2021-01-01 00:00:00|2020-01-01 00:00:00");
    }

    #[pg_test]
    fn replicated_insert_is_inserted_converted_or_skipped() {
        setup("1, 'last_xacttime', 'last', 2");
        replicated(
            "INSERT INTO mm VALUES (1, 'new row', now(), true, 3, '2020-01-01', '2020-01-01')",
        );
        assert_eq!(
            row(1),
            "new row|f|3|2020-01-01 00:00:00|2020-01-01 00:00:00"
        );
        // an older insert of an existing key: kept, and no duplicate-key error
        replicated(
            "INSERT INTO mm VALUES (1, 'older', now(), true, 2, '2019-01-01', '2019-01-01')",
        );
        assert_eq!(one::<String>("SELECT info FROM mm WHERE id = 1"), "new row");
        // a newer insert of an existing key becomes an update of that row
        replicated(
            "INSERT INTO mm VALUES (1, 'newer', now(), true, 2, '2022-01-01', '2022-01-01')",
        );
        assert_eq!(row(1), "newer|f|2|2022-01-01 00:00:00|2022-01-01 00:00:00");
        assert_eq!(one::<i64>("SELECT count(*) FROM mm"), 1);
    }

    #[pg_test]
    fn ties_go_to_the_preferred_node_then_the_lower_id() {
        setup("1, 'last_xacttime', 'last', 2");
        replicated(
            "INSERT INTO mm VALUES (1, 'node 3', now(), true, 3, '2020-01-01', '2020-01-01')",
        );
        replicated(
            "INSERT INTO mm VALUES (1, 'node 2', now(), true, 2, '2020-01-01', '2020-01-01')",
        );
        assert_eq!(
            one::<String>("SELECT info FROM mm WHERE id = 1"),
            "node 2",
            "preferred node wins a tie"
        );
        replicated(
            "INSERT INTO mm VALUES (2, 'node 4', now(), true, 4, '2020-01-01', '2020-01-01')",
        );
        replicated(
            "INSERT INTO mm VALUES (2, 'node 3', now(), true, 3, '2020-01-01', '2020-01-01')",
        );
        assert_eq!(
            one::<String>("SELECT info FROM mm WHERE id = 2"),
            "node 3",
            "lower id wins among the rest"
        );
    }

    #[pg_test]
    fn nulls_lose() {
        setup("1, 'mod_time', 'first', 2");
        replicated(
            "INSERT INTO mm VALUES (1, 'null time', NULL, true, 3, '2020-01-01', '2020-01-01')",
        );
        replicated("INSERT INTO mm VALUES (1, 'has time', '2030-01-01', true, 3, '2020-01-01', '2020-01-01')");
        assert_eq!(
            one::<String>("SELECT info FROM mm WHERE id = 1"),
            "has time"
        );
        replicated("UPDATE mm SET info = 'null again', mod_time = NULL WHERE id = 1");
        assert_eq!(
            one::<String>("SELECT info FROM mm WHERE id = 1"),
            "has time"
        );
    }

    #[pg_test]
    fn overwrite_quotes_identifiers_and_skips_generated_columns() {
        Spi::run(
            r#"CREATE SCHEMA "Odd Schema";
               CREATE TABLE "Odd Schema"."Odd Table"("Key" int, "select" text,
                   doubled int GENERATED ALWAYS AS ("Key" * 2) STORED,
                   mm_islocal boolean, mm_nodeid int2, mm_last_xacttime timestamptz, mm_last_stattime timestamptz,
                   PRIMARY KEY ("Key"));
               CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON "Odd Schema"."Odd Table"
                   FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, 'last_stattime', 'last', 2);"#,
        )
        .unwrap();
        replicated(
            r#"INSERT INTO "Odd Schema"."Odd Table"("Key", "select", mm_islocal, mm_nodeid, mm_last_xacttime, mm_last_stattime)
                   VALUES (5, 'first', true, 3, '2020-01-01', '2020-01-01');
               INSERT INTO "Odd Schema"."Odd Table"("Key", "select", mm_islocal, mm_nodeid, mm_last_xacttime, mm_last_stattime)
                   VALUES (5, 'second', true, 2, '2020-01-01', '2021-01-01');"#,
        );
        assert_eq!(
            one::<String>(
                r#"SELECT concat_ws('|', "select", doubled, mm_nodeid) FROM "Odd Schema"."Odd Table""#
            ),
            "second|10|2"
        );
    }

    #[pg_test]
    fn cache_follows_table_and_trigger_changes() {
        setup("1, 'last_xacttime', 'last', 2");
        Spi::run("INSERT INTO mm(id) VALUES (1)").unwrap();
        // Columns move: drop one before the bookkeeping columns and add one.
        Spi::run("ALTER TABLE mm DROP COLUMN info; ALTER TABLE mm ADD COLUMN extra text").unwrap();
        Spi::run("INSERT INTO mm(id, extra) VALUES (2, 'x')").unwrap();
        assert!(one::<bool>(
            "SELECT mm_islocal AND mm_nodeid = 1 FROM mm WHERE id = 2"
        ));
        // New arguments take effect at once.
        Spi::run(
            "DROP TRIGGER mm_resolve ON mm;
             CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(9, 'last_stattime', 'last', 2);",
        )
        .unwrap();
        Spi::run("INSERT INTO mm(id) VALUES (3)").unwrap();
        assert_eq!(one::<i16>("SELECT mm_nodeid FROM mm WHERE id = 3"), 9);
    }

    // ---- versioned deletes ---------------------------------------------------------------

    /// A replicated tombstone of `mm` key `id` (an int4: 4-byte length + big-endian value) from node
    /// 3, all of whose stamps are `at`.
    fn tombstone_sql(id: i32, at: &str) -> String {
        format!(
            "INSERT INTO mm_conflict.tombstone(table_name, pk, criterion, mm_last_stattime, mm_nodeid, mm_last_xacttime, order_last)
                 VALUES ('public.mm', '\\x00000004{id:08x}', '{at}', '{at}', 3, '{at}', true)"
        )
    }

    fn tombstones() -> i64 {
        one::<i64>("SELECT count(*) FROM mm_conflict.tombstone")
    }

    #[pg_test]
    fn local_delete_records_a_tombstone_above_the_row() {
        setup("1, 'last_xacttime', 'last', 2");
        replicated(
            "INSERT INTO mm VALUES (1, 'future', now(), true, 2, '2100-01-01', '2100-01-01')",
        );
        Spi::run("DELETE FROM mm WHERE id = 1").unwrap();
        assert_eq!(
            one::<String>(
                "SELECT concat_ws('|', table_name, encode(pk, 'hex'), mm_nodeid, order_last, order_preferred,
                        criterion AT TIME ZONE 'UTC', mm_last_stattime AT TIME ZONE 'UTC')
                   FROM mm_conflict.tombstone"
            ),
            "public.mm|0000000400000001|1|t|2|2100-01-01 00:00:00.000001|2100-01-01 00:00:00.000001"
        );
        // A second delete of a re-inserted row replaces the tombstone.
        Spi::run("INSERT INTO mm(id, info) VALUES (1, 'again'); DELETE FROM mm WHERE id = 1")
            .unwrap();
        assert_eq!(tombstones(), 1);
        assert!(one::<bool>(
            "SELECT criterion > '2100-01-01 00:00:00.000001+00' FROM mm_conflict.tombstone"
        ));
    }

    /// A local delete's tombstone is written without the executor: the same row, visible to the
    /// statement's later rows, in every index of the table, and through the executor again as
    /// soon as the table has a trigger (or an index) of someone else.
    #[pg_test]
    fn local_tombstones_are_written_like_an_insert() {
        setup("1, 'last_xacttime', 'last', 2");
        Spi::run("INSERT INTO mm(id, info) SELECT g, 'x' FROM generate_series(1, 6) g").unwrap();
        Spi::run("DELETE FROM mm WHERE id = 1").unwrap();
        assert!(one::<bool>(
            "SELECT deleted_at = now() AND criterion > now() FROM mm_conflict.tombstone"
        ));
        // Deleted and inserted again in one statement: the insert sees the tombstone.
        Spi::run(
            "WITH d AS (DELETE FROM mm WHERE id = 2 RETURNING id)
             INSERT INTO mm(id, info) SELECT id, 'back' FROM d",
        )
        .unwrap();
        assert!(one::<bool>(
            "SELECT m.mm_last_xacttime > t.criterion AT TIME ZONE 'UTC'
               FROM mm m, mm_conflict.tombstone t
              WHERE m.id = 2 AND t.pk = '\\x0000000400000002'"
        ));
        // Deleted again: the insert meets the stored tombstone in the index, steps back, and
        // the stored one is replaced (one tombstone of the key, the newer, by index and by scan).
        let first = one::<String>(
            "SELECT criterion::text FROM mm_conflict.tombstone WHERE pk = '\\x0000000400000002'",
        );
        Spi::run("DELETE FROM mm WHERE id = 2").unwrap();
        for scan in ["enable_seqscan = on", "enable_seqscan = off"] {
            Spi::run(&format!("SET LOCAL {scan}")).unwrap();
            assert!(one::<bool>(&format!(
                "SELECT count(*) = 1 AND max(criterion) > '{first}'
                   FROM mm_conflict.tombstone WHERE pk = '\\x0000000400000002'"
            )));
        }
        Spi::run("RESET enable_seqscan").unwrap();
        // Every index gets its entry (a DBA's index for purges, say).
        Spi::run("CREATE INDEX tombstone_deleted_at ON mm_conflict.tombstone (deleted_at)")
            .unwrap();
        Spi::run("DELETE FROM mm WHERE id = 3").unwrap();
        Spi::run("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off").unwrap();
        assert_eq!(
            one::<i64>("SELECT count(*) FROM mm_conflict.tombstone WHERE deleted_at = now()"),
            3
        );
        Spi::run("RESET enable_seqscan; RESET enable_bitmapscan; DROP INDEX mm_conflict.tombstone_deleted_at").unwrap();
        // Another trigger on the table fires.
        Spi::run(
            "CREATE TABLE public.tombstone_audit(pk bytea);
             CREATE FUNCTION public.tombstone_audit() RETURNS trigger LANGUAGE plpgsql AS
               $f$ BEGIN INSERT INTO public.tombstone_audit VALUES (NEW.pk); RETURN NEW; END $f$;
             CREATE TRIGGER audit AFTER INSERT ON mm_conflict.tombstone
                 FOR EACH ROW EXECUTE FUNCTION public.tombstone_audit();
             DELETE FROM mm WHERE id = 4;",
        )
        .unwrap();
        assert_eq!(
            one::<String>("SELECT string_agg(encode(pk, 'hex'), ',') FROM public.tombstone_audit"),
            "0000000400000004"
        );
        Spi::run("DROP TRIGGER audit ON mm_conflict.tombstone; DELETE FROM mm WHERE id = 5")
            .unwrap();
        assert_eq!(one::<i64>("SELECT count(*) FROM public.tombstone_audit"), 1);
        assert_eq!(tombstones(), 5);
    }

    /// PostgreSQL's microseconds since 2000-01-01 of a timestamp.
    fn micros(at: &str) -> i64 {
        one::<i64>(&format!(
            "SELECT ((extract(epoch FROM timestamptz '{at}') - 946684800) * 1000000)::int8"
        ))
    }

    /// The tombstones' marks (which let a local INSERT above its key's skip its probe) bound every
    /// tombstone: the ones a local delete writes without the executor, the ones written through
    /// the table's trigger, and the ones stored before the marks were known (read once). Other
    /// tests run at the same time and raise marks too, but to no year after 2100.
    #[pg_test]
    fn tombstone_marks_bound_every_tombstone() {
        use crate::catalog::{mark, tombstones};
        let table = crate::pg::names::stable_hash(b"public.mm");
        let key = |id: u32| [&4u32.to_be_bytes()[..], &id.to_be_bytes()[..]].concat();
        let bucket = |id| mark::bucket(table, &key(id));
        setup("1, 'last_xacttime', 'last', 2");
        mark::forget();
        tombstones::key_below(table, &key(1), 0); // learnt from the table
                                                  // A local delete of a row stamped in the future writes a tombstone above it.
        replicated("INSERT INTO mm VALUES (1, 'x', now(), true, 2, '2150-01-01', '2150-01-01')");
        Spi::run("DELETE FROM mm WHERE id = 1").unwrap();
        assert!(mark::known(bucket(1)).expect("known") > micros("2150-01-01 00:00:00+00"));
        assert!(!tombstones::key_below(
            table,
            &key(1),
            micros("2150-01-01 00:00:00.000001+00")
        ));
        // A tombstone from a peer, through the trigger.
        replicated(&tombstone_sql(2, "2160-01-01"));
        assert!(mark::known(bucket(2)).expect("known") >= micros("2160-01-01 00:00:00+00"));
        // Learnt again from the table after a restart would forget them.
        mark::forget();
        assert!(!tombstones::key_below(
            table,
            &key(2),
            micros("2160-01-01 00:00:00+00")
        ));
        assert!(mark::known(bucket(1)).expect("known") > micros("2150-01-01 00:00:00+00"));
        // A re-insert of either key is stamped above its tombstone.
        Spi::run("INSERT INTO mm(id, info) VALUES (1, 'a'), (2, 'b')").unwrap();
        assert!(one::<bool>(
            "SELECT bool_and(mm_last_xacttime > '2150-01-01') FROM mm WHERE id IN (1, 2)"
        ));
        assert!(one::<bool>(
            "SELECT mm_last_xacttime > '2160-01-01' FROM mm WHERE id = 2"
        ));
    }

    #[pg_test]
    fn local_reinsert_is_stamped_above_the_tombstone() {
        setup("1, 'last_xacttime', 'last', 2");
        replicated("INSERT INTO mm VALUES (1, 'x', now(), true, 2, '2020-01-01', '2020-01-01')");
        replicated(&tombstone_sql(1, "2100-01-01"));
        assert_eq!(
            one::<i64>("SELECT count(*) FROM mm"),
            0,
            "the newer tombstone deleted the row"
        );
        Spi::run("INSERT INTO mm(id, info) VALUES (1, 'back')").unwrap();
        assert_eq!(
            row(1),
            "back|t|1|2100-01-01 00:00:00.000001|2100-01-01 00:00:00.000001"
        );
    }

    #[pg_test]
    fn replicated_delete_needs_a_winning_tombstone() {
        setup("1, 'last_xacttime', 'last', 2");
        replicated("INSERT INTO mm VALUES (1, 'x', now(), true, 2, '2020-01-01', '2020-01-01')");
        // No tombstone: an unversioned delete is skipped.
        replicated("DELETE FROM mm WHERE id = 1");
        assert_eq!(one::<i64>("SELECT count(*) FROM mm"), 1);
        // The delete's tombstone travels first, in the same transaction, and wins: deleted.
        replicated(&format!(
            "{}; DELETE FROM mm WHERE id = 1",
            tombstone_sql(1, "2021-01-01")
        ));
        assert_eq!(one::<i64>("SELECT count(*) FROM mm"), 0);
        // An older re-insert stays deleted; a newer one comes back.
        replicated(
            "INSERT INTO mm VALUES (1, 'older', now(), true, 2, '2020-06-01', '2020-06-01')",
        );
        assert_eq!(one::<i64>("SELECT count(*) FROM mm"), 0);
        replicated(
            "INSERT INTO mm VALUES (1, 'newer', now(), true, 2, '2022-01-01', '2022-01-01')",
        );
        assert_eq!(one::<String>("SELECT info FROM mm"), "newer");
    }

    #[pg_test]
    fn a_losing_tombstone_keeps_and_resends_the_row() {
        setup("1, 'last_xacttime', 'last', 2");
        Spi::run("INSERT INTO mm(id, info) VALUES (1, 'kept')").unwrap();
        let before = one::<String>("SELECT ctid::text FROM mm WHERE id = 1");
        replicated(&format!(
            "{}; DELETE FROM mm WHERE id = 1",
            tombstone_sql(1, "2000-01-01")
        ));
        // Same row and version, written again (new physical row: DELETE + INSERT went out).
        assert_eq!(
            one::<String>("SELECT info || '|' || mm_islocal || '|' || mm_nodeid FROM mm"),
            "kept|true|1"
        );
        assert_ne!(
            one::<String>("SELECT ctid::text FROM mm WHERE id = 1"),
            before
        );
        // The same tombstone arriving again (a relay) re-sends nothing.
        let after = one::<String>("SELECT ctid::text FROM mm WHERE id = 1");
        replicated(&format!(
            "{}; DELETE FROM mm WHERE id = 1",
            tombstone_sql(1, "2000-01-01")
        ));
        assert_eq!(
            one::<String>("SELECT ctid::text FROM mm WHERE id = 1"),
            after
        );
        assert_eq!(tombstones(), 1);
    }

    #[pg_test]
    fn tombstones_resolve_by_version_and_purges_stay_local() {
        setup("1, 'last_xacttime', 'last', 2");
        let ins = |t: &str| tombstone_sql(9, t);
        replicated(&ins("2021-01-01"));
        replicated(&ins("2020-01-01")); // older: kept the newer one, no duplicate-key error
        assert_eq!(
            one::<String>("SELECT (criterion AT TIME ZONE 'UTC')::text FROM mm_conflict.tombstone"),
            "2021-01-01 00:00:00"
        );
        replicated(&ins("2022-01-01"));
        assert_eq!(
            one::<String>("SELECT (criterion AT TIME ZONE 'UTC')::text FROM mm_conflict.tombstone"),
            "2022-01-01 00:00:00"
        );
        // A purge replicated from a peer is skipped; a local purge removes.
        replicated("DELETE FROM mm_conflict.tombstone");
        assert_eq!(tombstones(), 1);
        Spi::run("UPDATE mm_conflict.tombstone SET deleted_at = now() - interval '2 hours'")
            .unwrap();
        assert_eq!(
            one::<i64>("SELECT mm_conflict.purge_tombstones(interval '1 day')"),
            0,
            "not old enough"
        );
        assert_eq!(
            one::<i64>("SELECT mm_conflict.purge_tombstones(interval '1 hour')"),
            1
        );
        assert_eq!(tombstones(), 0);
    }

    #[pg_test]
    fn first_mode_refuses_deletes_like_updates() {
        setup("1, 'last_xacttime', 'first', 2");
        Spi::run("INSERT INTO mm(id) VALUES (1)").unwrap();
        assert_eq!(
            sqlstate_of("DELETE FROM mm WHERE id = 1").as_deref(),
            Some("27000")
        );
        assert_eq!(tombstones(), 0);
    }

    // ---- conflict reports ------------------------------------------------------------------

    fn conflict_log() -> String {
        Spi::get_one::<String>(
            "SELECT string_agg(concat_ws(' ', decision, key, stored_node, incoming_node,
                                         stored_row->>'info', incoming_row->>'info', origin), '; ' ORDER BY id)
               FROM mm_conflict.conflict_log",
        )
        .unwrap()
        .unwrap_or_default()
    }

    #[pg_test]
    fn conflicts_are_logged_as_rows_and_only_conflicts() {
        setup("1, 'last_xacttime', 'last', 2");
        Spi::run("SET LOCAL mm_conflict.log_conflicts = 'table'").unwrap();
        Spi::run("INSERT INTO mm(id, info) VALUES (1, 'a')").unwrap();
        let update = |info: &str, node: i32, time: &str| {
            replicated(&format!(
                "UPDATE mm SET info = '{info}', mm_nodeid = {node}, mm_last_xacttime = '{time}', \
                 mm_last_stattime = '{time}' WHERE id = 1"
            ))
        };
        update("b", 2, "2100-01-01"); // wins over node 1's row: applied, a conflict
        update("c", 3, "2000-01-01"); // loses: kept_local
        update("b", 2, "2100-01-01"); // its own version again: a duplicate, not a conflict
        update("d", 2, "2101-01-01"); // node 2 over its own row: applied, not a conflict
                                      // a replicated INSERT of a stored key that wins: converted (its UPDATE is not reported again)
        replicated("INSERT INTO mm VALUES (1, 'e', now(), true, 3, '2102-01-01', '2102-01-01')");
        replicated("INSERT INTO mm VALUES (2, 'f', now(), true, 3, '2000-01-01', '2000-01-01')"); // new key
        Spi::run("DELETE FROM mm WHERE id = 2").unwrap(); // node 1's tombstone
                                                          // an older INSERT of the deleted key loses to the tombstone (no stored row)
        replicated("INSERT INTO mm VALUES (2, 'g', now(), true, 3, '2000-01-02', '2000-01-02')");
        assert_eq!(
            conflict_log(),
            "applied {\"id\": 1} 1 2 a b mm_test_peer; \
             kept_local {\"id\": 1} 2 3 b c mm_test_peer; \
             insert_converted_to_update {\"id\": 1} 2 3 d e mm_test_peer; \
             kept_local {\"id\": 2} 1 3 g mm_test_peer"
        );
        assert!(one::<bool>(
            "SELECT incoming_value = '2100-01-01 00:00:00+00' AND criterion = 'mm_last_xacttime'
                    AND table_name = 'public.mm' AND subscription IS NULL
                    AND (incoming_row->>'mm_nodeid')::int = 2 AND incoming_row ? 'mod_time'
               FROM mm_conflict.conflict_log ORDER BY id LIMIT 1"
        ));
        assert_eq!(one::<String>("SELECT info FROM mm WHERE id = 1"), "e");

        // off: the same conflicts leave no rows
        Spi::run("DELETE FROM mm_conflict.conflict_log; SET LOCAL mm_conflict.log_conflicts = off")
            .unwrap();
        update("h", 3, "2000-01-01");
        replicated("INSERT INTO mm VALUES (1, 'i', now(), true, 2, '2200-01-01', '2200-01-01')");
        assert_eq!(conflict_log(), "");
        assert_eq!(one::<String>("SELECT info FROM mm WHERE id = 1"), "i");
    }

    /// What the runner sends a peer reads back there as the very values (keys with every byte,
    /// text with quotes and backslashes), whatever `standard_conforming_strings` is.
    #[pg_test]
    fn values_sent_to_peers_read_back_as_sent() {
        use crate::mesh::remote::{call, Value};
        use crate::pg::spi::read_one;
        let keys = vec![
            vec![0u8, 1, 0xff],
            vec![],
            vec![b'\\', b'\'', b'"', b'{', b','],
        ];
        let text = "it's a \\ back\"slash, {a,b}";
        for conforming in ["on", "off"] {
            Spi::run(&format!(
                "SET LOCAL standard_conforming_strings = {conforming}"
            ))
            .unwrap();
            let sql = format!(
                "SELECT {} OPERATOR(pg_catalog.=) $1",
                Value::Keys(&keys).sql()
            );
            assert_eq!(
                read_one::<bool>(&sql, &[keys.clone().into()]).unwrap(),
                Some(true)
            );
            let sql = format!("SELECT {}", Value::Text(text).sql());
            assert_eq!(
                read_one::<String>(&sql, &[]).unwrap().as_deref(),
                Some(text)
            );
        }
        assert_eq!(
            call("f", &[Value::Bool(true), Value::Table("public.t")]),
            "SELECT mm_conflict.f(true, 'public.t'::pg_catalog.regclass)"
        );
        // A set-returning call's rows come back as one JSON array, empty when there are none.
        let rows = crate::mesh::remote::call_rows("_sequences", &[], &["table_name"]);
        assert_eq!(
            read_one::<String>(&rows, &[]).unwrap().as_deref(),
            Some("[]")
        );
        // Rows as arrays of the columns asked for, in that order.
        let nodes = r#"[{"id": 1, "conninfo": "a"}, {"id": 2, "name": "b", "conninfo": "c"}]"#;
        let rows = crate::mesh::remote::call_rows(
            "mesh_nodes",
            &[Value::Text(nodes)],
            &["node_id", "node_name"],
        );
        let json: serde_json::Value =
            serde_json::from_str(&read_one::<String>(&rows, &[]).unwrap().unwrap()).unwrap();
        assert_eq!(json, serde_json::json!([[1, null], [2, "b"]]));
    }
}
