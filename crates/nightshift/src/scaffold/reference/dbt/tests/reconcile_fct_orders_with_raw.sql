-- Reconciliation: the fact table holds exactly the orders extracted for this ds.
with fact as (
    select count(*) as n from {{ ref('fct_orders') }} where dt = cast('{{ var("ds") }}' as date)
),
raw as (
    select count(*) as n from {{ source('raw', 'orders') }} where dt = cast('{{ var("ds") }}' as date)
)
select fact.n as fact_rows, raw.n as raw_rows
from fact, raw
where fact.n != raw.n
