"""SQLModel tables. Only the store package sees them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, ForeignKey, Index, LargeBinary, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if isinstance(value, datetime) else value


def _when(nullable: bool = False) -> Any:
    return Field(sa_column=Column(UTCDateTime(), nullable=nullable))


class ApiKeyRow(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=32)
    organisation_id: str = Field(max_length=128, index=True)
    salt: bytes = Field(sa_column=Column(LargeBinary(), nullable=False))
    secret_hash: bytes = Field(sa_column=Column(LargeBinary(), nullable=False))
    created_at: datetime = _when()
    expires_at: datetime | None = _when(nullable=True)
    revoked_at: datetime | None = _when(nullable=True)
    last_used_at: datetime | None = _when(nullable=True)


class LiveFlowRow(SQLModel, table=True):
    __tablename__ = "live_flows"
    __table_args__ = (
        Index("ix_live_flows_org_created", "organisation_id", "created_at", "id"),
        UniqueConstraint("organisation_id", "request_id", name="uq_live_flows_request"),
    )

    id: str = Field(primary_key=True, max_length=36)
    organisation_id: str = Field(max_length=128)
    name: str
    description: str
    current_version_id: str | None = Field(default=None, max_length=36)
    auto_eval_flow_ids: list[str] = Field(sa_column=Column(JSON, nullable=False))
    request_id: str | None = Field(default=None, max_length=128)
    created_at: datetime = _when()
    updated_at: datetime = _when()


class FlowVersionRow(SQLModel, table=True):
    __tablename__ = "flow_versions"
    __table_args__ = (
        UniqueConstraint("flow_id", "version", name="uq_flow_versions_number"),
        Index("ix_flow_versions_flow_created", "flow_id", "created_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=36)
    flow_id: str = Field(
        sa_column=Column(ForeignKey("live_flows.id", ondelete="CASCADE"), nullable=False)
    )
    organisation_id: str = Field(max_length=128)
    version: int
    graph: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _when()


metadata = SQLModel.metadata
