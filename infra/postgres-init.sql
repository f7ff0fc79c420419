-- The MLflow backend store shares the Postgres server with Prefect (separate databases).
CREATE DATABASE mlflow OWNER beit3;
