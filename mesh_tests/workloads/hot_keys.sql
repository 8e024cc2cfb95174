-- Every node updates the same 100 keys as fast as it can.
\set id random(1,100)
update mm set info = md5(random()::text), mod_time = clock_timestamp() where id = :id;
