-- The customers table is extracted whole each day; the latest partition is the truth.
select customer_id, name, email, country, cast(created_at as timestamp) as created_at, dt
from {{ source('raw', 'customers') }}
where dt = cast('{{ var("ds") }}' as date)
