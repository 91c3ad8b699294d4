"""Results of the ingest job."""
from __future__ import annotations

from pydantic import BaseModel, Field


class TableIngestStats(BaseModel):
    """One table's ledger: read = accepted + quarantined + duplicates."""

    table: str
    source: str
    read: int
    accepted: int
    quarantined: int
    duplicates: int
    inserted: int
    updated: int
    version: int
    run_id: str
    quarantine_reasons: dict[str, int] = Field(default_factory=dict)
    ignored_columns: list[str] = Field(default_factory=list)  # input columns that map to no column of the table
    notes: dict[str, int] = Field(default_factory=dict)  # events: returns and how many were linked to their purchase
    # wall seconds of each stage: plan, parse (read + clean + stage, in Ray Data), resolve, commit, quarantine
    phase_seconds: dict[str, float] = Field(default_factory=dict)


class IngestResult(BaseModel):
    """Summary printed as the job's last line."""

    ok: bool = True
    source: str
    read: int
    accepted: int
    quarantined: int
    duplicates: int
    versions: dict[str, int]
    tables: list[TableIngestStats]
    warnings: list[str] = []
    seconds: float
