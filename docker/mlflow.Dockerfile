# The official MLflow server image plus the PostgreSQL driver it lacks (mlflow#9513).
# Installed at build time: a container start must not need the network.
ARG MLFLOW_IMAGE=ghcr.io/mlflow/mlflow:v3.17.2
FROM ${MLFLOW_IMAGE}

RUN pip install --no-cache-dir psycopg2-binary==2.9.13 \
    && python -c "import psycopg2"
