"""Run records: the database, MLflow's copy of each run, and what users do with recorded runs."""
