-- Runs once, when the postgres container initialises an empty volume (docker-entrypoint-initdb.d).
-- MLflow gets a database of its own: it keeps its own Alembic history in a table named
-- alembic_version, which would collide with the training service's in a shared database.
CREATE DATABASE mlflow;
