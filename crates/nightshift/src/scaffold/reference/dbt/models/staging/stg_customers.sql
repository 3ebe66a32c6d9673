-- The customers table is extracted whole each day; the newest snapshot is the truth, also
-- when an older day is backfilled (its orders may name customers created since).
select customer_id, name, email, country, cast(created_at as timestamp) as created_at, dt
from {{ source('raw', 'customers') }}
where dt = (select max(dt) from {{ source('raw', 'customers') }})
