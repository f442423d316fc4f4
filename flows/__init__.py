"""The Prefect flows of the nightly pipeline (nightly.py), its deployment (deploy.py) and its DVC stages (stages.py).
Importing the package sets the embedded components' quiet, offline defaults before Prefect or MLflow is imported."""

from pipeline.environ import quiet_env

quiet_env()
