select
    payment_id,
    order_id,
    method,
    amount_cents,
    cast(paid_ts as timestamp) as paid_ts,
    dt
from {{ source('raw', 'payments') }}
where dt = cast('{{ var("ds") }}' as date)
