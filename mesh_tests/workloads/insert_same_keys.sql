-- Every node inserts the same keys as fast as it can (ON CONFLICT DO NOTHING, so local clients
-- never fail): apply workers from two peers and local sessions meet the same new keys at once.
\set id random(1,50000)
insert into mm values (:id, md5(random()::text), now()) on conflict (id) do nothing;
