select
    order_id,
    line_no,
    product_id,
    quantity,
    unit_price_cents,
    quantity * unit_price_cents as amount_cents,
    dt
from {{ source('raw', 'order_items') }}
where dt = cast('{{ var("ds") }}' as date)
