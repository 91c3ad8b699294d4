"""Ingest: read shop files with Ray Data, clean and validate them, upsert into LanceDB, quarantine the rest."""
