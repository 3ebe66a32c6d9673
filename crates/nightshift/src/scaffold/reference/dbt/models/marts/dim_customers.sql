select customer_id, name, email, country, created_at
from {{ ref('stg_customers') }}
