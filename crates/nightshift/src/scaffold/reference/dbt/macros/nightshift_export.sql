{# Writes one ds partition of each model to a Parquet file; nightshift's publish task calls
   `dbt run-operation nightshift_export --args '{exports: [{model, path}], ds}'`. #}
{% macro nightshift_export(exports, ds) %}
  {% for e in exports %}
    {% set sql %}
      copy (select * from {{ ref(e['model']) }} where dt = cast('{{ ds }}' as date))
      to '{{ e['path'] }}' (format parquet)
    {% endset %}
    {% do run_query(sql) %}
    {% do log("exported " ~ e['model'] ~ " dt=" ~ ds, info=True) %}
  {% endfor %}
{% endmacro %}
