{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='dt') }}

select
    dt,
    count(*) as orders,
    count(*) filter (where status != 'cancelled') as paid_orders,
    sum(amount_cents) filter (where status != 'cancelled') as revenue_cents,
    sum(paid_cents) as paid_cents
from {{ ref('fct_orders') }}
where dt = cast('{{ var("ds") }}' as date)
group by dt
