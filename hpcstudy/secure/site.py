"""The site's settings for the secure environment, set by the operator, not the researcher.

``/etc/hpcstudy/site.yaml`` when it exists, else the file ``$HPCSTUDY_SITE_CONFIG`` names
(for sites without a system file, and for tests)::

    audit_log: /srv/hpcstudy/audit.jsonl        # the log every command appends to
    audit_key_file: /etc/hpcstudy/audit.key     # HMAC key of the chain (>= 32 bytes)
    audit_append_command: [sudo, -n, -u, hpcaudit, /opt/hpcstudy/bin/hpcstudy-audit-append]
    require_project: true                       # check, plan, run, submit need --project

Every field is optional. Without ``audit_key_file`` the chain is a plain SHA-256 chain that
anyone who can write the log can recompute (``audit verify`` says so). See docs/operators.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

SYSTEM_FILE = Path("/etc/hpcstudy/site.yaml")
FIELDS = ("audit_log", "audit_key_file", "audit_append_command", "require_project")


@dataclass(frozen=True)
class Site:
    source: str | None
    audit_log: Path | None = None
    audit_key_file: Path | None = None
    audit_append_command: tuple[str, ...] | None = None
    require_project: bool = False


def site_file() -> Path | None:
    if SYSTEM_FILE.is_file():
        return SYSTEM_FILE
    env = os.environ.get("HPCSTUDY_SITE_CONFIG")
    return Path(env) if env else None


def load_site() -> Site:
    """The site's settings (all defaults when no site file exists); a bad file is a one-line
    error naming file, line and field."""
    path = site_file()
    if path is None:
        return Site(None)
    from ..study.yamlio import Node, load

    if not path.is_file():
        raise UserError(f"the site config {path} does not exist",
                        fix="fix or unset HPCSTUDY_SITE_CONFIG")
    doc = load(path, "site config")
    if doc is None:
        return Site(str(path))
    if not isinstance(doc, Node):
        raise UserError("must be a mapping of settings", where=str(path),
                        fix=f"fields: {', '.join(FIELDS)}")

    def bad(key, message, fix=""):
        return UserError(message, where=f"{path}:{doc.line_of(key)}: {key}", fix=fix or None)

    for k in doc:
        if k not in FIELDS:
            raise bad(k, "unknown field", f"fields: {', '.join(FIELDS)}")
    kw: dict = {}
    for k in ("audit_log", "audit_key_file"):
        v = doc.get(k)
        if v is not None:
            if not isinstance(v, str) or not v.strip():
                raise bad(k, "must be a file path")
            kw[k] = Path(v)
    cmd = doc.get("audit_append_command")
    if cmd is not None:
        if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
            raise bad("audit_append_command", "must be a list of words (the helper's argv)",
                      "e.g. [sudo, -n, -u, hpcaudit, /opt/hpcstudy/bin/hpcstudy-audit-append]")
        kw["audit_append_command"] = tuple(cmd)
    if cmd is not None and "audit_log" not in kw:
        raise bad("audit_append_command", "needs audit_log too",
                  "name the log the helper appends to, so every command reads the same one")
    req = doc.get("require_project", False)
    if not isinstance(req, bool):
        raise bad("require_project", f"must be true or false, not {req!r}")
    kw["require_project"] = req
    return Site(str(path), **kw)
