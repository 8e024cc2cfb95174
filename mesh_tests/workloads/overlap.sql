-- Every node inserts and upserts the same 2000 keys: true insert-insert conflicts.
\set id random(1,2000)
insert into mm values (:id, md5(random()::text), now()) on conflict (id) do update set info = excluded.info, mod_time = clock_timestamp();
