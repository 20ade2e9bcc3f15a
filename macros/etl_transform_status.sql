{#-
  Records a dbt model's run over a raw table in etl_transform_status, as
  `etl-pipeline transform mark` does, so `etl-pipeline status` shows the
  load and the transformation side by side. Use it as a post-hook:

    {{ config(post_hook="{{ etl_mark_transform('procedurelog') }}") }}

  status: 'success' (moves last_transformed) or 'failed'; rows: optional.
  The tracking schema is var('etl_raw_schema'), default 'raw'.
-#}
{% macro etl_mark_transform(table_name, status='success', rows=none) -%}
{%- set schema = var('etl_raw_schema', 'raw') -%}
{%- set rows = 'null' if rows is none else rows -%}
insert into {{ schema }}.etl_transform_status as s
  (table_name, last_transformed, rows_transformed, transform_status, _transformed_at, _created_at, _updated_at)
values ('{{ table_name }}',
        case when '{{ status }}' = 'success' then now() else timestamp '1970-01-01 00:00:01' end,
        coalesce({{ rows }}, 0), '{{ status }}', now(), now(), now())
on conflict (table_name) do update set
  last_transformed = case when excluded.transform_status = 'success' then now() else s.last_transformed end,
  rows_transformed = coalesce({{ rows }}, s.rows_transformed),
  transform_status = excluded.transform_status,
  _transformed_at = now(),
  _updated_at = now()
{%- endmacro %}
