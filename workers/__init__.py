"""Celery workers: the app, job tasks (thin adapters around the engine) and the job client."""
