select
    order_id,
    customer_id,
    cast(order_ts as timestamp) as order_ts,
    status,
    dt
from {{ source('raw', 'orders') }}
where dt = cast('{{ var("ds") }}' as date)
