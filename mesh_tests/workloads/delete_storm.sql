-- Every node deletes and re-inserts the same 500 keys as fast as it can.
\set id random(1,500)
delete from mm where id = :id;
insert into mm values (:id, md5(random()::text), now()) on conflict (id) do update set info = excluded.info, mod_time = clock_timestamp();
