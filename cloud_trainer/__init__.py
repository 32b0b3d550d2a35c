"""The cloud trainer: log ingest, retraining, compression, the model registry and model push."""
