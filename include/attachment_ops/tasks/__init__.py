"""Task bodies of the DAGs: each resolves Airflow connections and calls the library.

DAG files import these lazily inside their ``@task`` functions, so parsing a DAG file never
imports boto3, psycopg or docker.
"""
