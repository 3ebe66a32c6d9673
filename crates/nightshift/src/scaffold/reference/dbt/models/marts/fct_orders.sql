-- One row per order, partitioned by dt; a run replaces exactly its own partition.
{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='dt') }}

with items as (
    select order_id, count(*) as items, sum(amount_cents) as amount_cents
    from {{ ref('stg_order_items') }}
    group by order_id
),
paid as (
    select order_id, sum(amount_cents) as paid_cents
    from {{ ref('stg_payments') }}
    group by order_id
)
select
    o.order_id,
    o.customer_id,
    o.order_ts,
    o.status,
    coalesce(i.items, 0) as items,
    coalesce(i.amount_cents, 0) as amount_cents,
    coalesce(p.paid_cents, 0) as paid_cents,
    o.dt
from {{ ref('stg_orders') }} o
left join items i using (order_id)
left join paid p using (order_id)
