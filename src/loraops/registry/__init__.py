"""The adapter registry: immutable, content-addressed adapter versions, stages and an audit log.

    from loraops.registry import Registry
    reg = Registry()                      # SQLite in LORAOPS_HOME, or LORAOPS_DB_URL
    v = reg.push("out/adapter", name="acme-invoices", tenant="acme")
    reg.promote("acme-invoices", v.version, actor="alice")
    path = reg.fetch("acme-invoices@production")
"""

from loraops.registry.records import (AdapterDetail, AdapterSummary, AuditEntry, BaseInfo, ParentLink,
                                      StageEvent, VersionInfo, to_json)
from loraops.registry.service import PRODUCTION, Gate, Registry

__all__ = ["Registry", "Gate", "PRODUCTION", "VersionInfo", "AdapterSummary", "AdapterDetail", "StageEvent",
           "AuditEntry", "BaseInfo", "ParentLink", "to_json"]
