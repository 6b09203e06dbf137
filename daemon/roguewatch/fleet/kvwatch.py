"""Fleet policies and rule files, from the key-value bucket to this host, validated first.

Owns applying one bucket entry (``policy.NAME``: a policies.d file; ``rules.NAME``: a rule
file) on the host: it is validated exactly as a local reload validates (the collector's
``policy.load_adoption_dirs`` over policies.d and the fleet's policies; the evaluator's
``ruleset.load_configured`` over every rule directory), with the new file staged in place of
the fleet's current one. A file that passes is installed (written, fsynced, renamed) in the
fleet's directory and the component reloads: the collector on ``reload_policies``, the
evaluator on the change of a rule directory it watches. A file that fails is kept out, the
set in effect stays, and a critical `monitor` alert says why (it is published like any alert).
A deleted key removes its file. What was applied, with its hash, is reported in heartbeats.

It must not talk to NATS: the forwarder feeds it entries (in a worker thread: compiling rules
takes a while).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace

from roguewatch.detect import ruleset
from roguewatch.fleet import subjects
from roguewatch.policy import policy as policy_mod
from roguewatch.policy.config import Config

log = logging.getLogger("roguewatch.fleet.kvwatch")


@dataclass
class Applied:
    key: str
    revision: int
    state: str  # applied, refused, removed, ignored
    hash: str = ""
    error: str = ""


def content_hash(kind: str, name: str, data: bytes) -> str:
    """The hash a host reports for an entry: a policy's digest (its contents, not their
    formatting, as the collector computes it), a rule file's bytes' sha256."""
    if kind == "policy":
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, f"{name}.yaml"), "wb") as f:
                f.write(data)
            return policy_mod.digest(policy_mod.load_adoptions(d))
    return hashlib.sha256(data).hexdigest()[:16]


def validate(cfg: Config, kind: str, name: str, data: bytes, label: str) -> str:
    """ "" when the entry would load as a local reload loads it; the error otherwise (with
    ``label`` in place of the staging directory's path)."""
    fc = cfg.fleet
    live = fc.policies_dir if kind == "policy" else fc.rules_dir
    os.makedirs(fc.state_dir, mode=0o700, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".stage-", dir=fc.state_dir)
    try:
        if os.path.isdir(live):
            for f in os.listdir(live):
                if f.endswith((".yaml", ".yml")) and f != f"{name}.yaml":
                    shutil.copy2(os.path.join(live, f), stage)
        with open(os.path.join(stage, f"{name}.yaml"), "wb") as f:
            f.write(data)
        try:
            if kind == "policy":
                local = [cfg.policies_dir] if cfg.policies_dir else []
                policy_mod.load_adoption_dirs([*local, stage])
            else:
                without_fleet = replace(cfg, fleet=replace(fc, rules=False))
                ruleset.load_configured(without_fleet, extra_dirs=[stage])
        except (policy_mod.PolicyError, ruleset.RuleError) as exc:
            return (
                str(exc)
                .replace(os.path.join(stage, f"{name}.yaml"), label)
                .replace(stage, label.rsplit("/", 1)[0])
            )
        return ""
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def install_here(directory: str, name: str, data: bytes | None) -> None:
    path = os.path.join(directory, f"{name}.yaml")
    if data is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = os.path.join(directory, f".{name}.yaml.tmp")  # not *.yaml: no reader takes it
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class PolicyStore:
    """The host's end of the bucket. ``announce(kind, detail, severity)`` raises a monitor
    alert; ``reload_policies()`` asks the collector to read policies.d again (its answer, or
    raises with the reason)."""

    def __init__(
        self,
        cfg: Config,
        announce: Callable[[str, str, str], None],
        reload_policies: Callable[[], dict],
        install: Callable[[str, str, bytes | None], None] | None = None,
    ) -> None:
        self.cfg = cfg
        # Who writes a file into the fleet's directories: by default this process; the
        # forwarder asks the collector, whose watchers then take it as the new baseline.
        self.install = install or (
            lambda kind, name, data: install_here(self.directory(kind), name, data)
        )
        self.fc = cfg.fleet
        self.announce = announce
        self.reload_policies = reload_policies
        self.applied: dict[str, Applied] = {}
        self.policy_hash = ""

    def _wanted(self, kind: str, name: str) -> bool:
        if kind == "rules":
            return self.fc.rules
        return "*" in self.fc.policies or name in self.fc.policies

    def directory(self, kind: str) -> str:
        return self.fc.policies_dir if kind == "policy" else self.fc.rules_dir

    def apply(self, key: str, data: bytes | None, revision: int) -> Applied:
        """One entry (``data`` None: deleted) applied, or refused with a monitor alert."""
        try:
            kind, name = subjects.split_key(key)
        except ValueError as exc:
            return self._note(Applied(key, revision, "ignored", error=str(exc)))
        if not self._wanted(kind, name):
            return self._note(Applied(key, revision, "ignored", error="not taken by this host"))
        path = os.path.join(self.directory(kind), f"{name}.yaml")
        if data is None:
            if os.path.exists(path):
                self.install(kind, name, None)
                self._reload(kind, key)
            self.applied.pop(key, None)
            return Applied(key, revision, "removed")
        label = f"{self.fc.policy_bucket}/{key}"
        with contextlib.suppress(OSError), open(path, "rb") as f:
            if f.read() == data:  # already in effect (a restart, a reconnect)
                return self._note(Applied(key, revision, "applied", self._hash(kind, name, data)))
        error = validate(self.cfg, kind, name, data, label)
        if error:
            what = "policy" if kind == "policy" else "rule file"
            self.announce(
                f"fleet_{kind}_refused",
                f"fleet {what} {name!r} (revision {revision}) refused, the {what}s in effect "
                f"stay: {error}",
                "critical",
            )
            log.error("fleet %s %s (revision %d) refused: %s", kind, name, revision, error)
            return self._note(Applied(key, revision, "refused", error=error))
        self.install(kind, name, data)
        self._reload(kind, key)
        log.info("fleet %s %s (revision %d) applied", kind, name, revision)
        return self._note(Applied(key, revision, "applied", self._hash(kind, name, data)))

    def _hash(self, kind: str, name: str, data: bytes) -> str:
        try:
            return content_hash(kind, name, data)
        except policy_mod.PolicyError:
            return "?"

    def _note(self, a: Applied) -> Applied:
        if a.state in ("applied", "refused"):
            prev = self.applied.get(a.key)
            # A refused revision leaves the applied one in effect: report both.
            if a.state == "refused" and prev is not None and prev.state == "applied":
                a = replace(a, hash=prev.hash)
        self.applied[a.key] = a
        return a

    def _reload(self, kind: str, key: str) -> None:
        if kind == "rules":
            return  # the evaluator watches the fleet's rule directory and reloads by itself
        try:
            self.policy_hash = str(self.reload_policies().get("policy_hash", ""))
        except Exception as exc:  # the collector refused (a broken local file) or is away
            self.announce("fleet_policy_refused",
                          f"policies not reloaded after {key}: {exc}", "critical")  # fmt: skip

    def reconcile(self, keys: set[str]) -> None:
        """After the bucket's initial values: files whose key is gone from it are removed."""
        for kind in subjects.KINDS:
            directory = self.directory(kind)
            if not os.path.isdir(directory):
                continue
            for f in sorted(os.listdir(directory)):
                if not f.endswith(".yaml"):
                    continue
                key = f"{kind}.{f[: -len('.yaml')]}"
                if key not in keys:
                    self.apply(key, None, 0)

    def report(self) -> dict[str, dict]:
        """Per key: revision, state, hash (and the error of a refused one) for heartbeats."""
        return {
            k: {"revision": a.revision, "state": a.state, "hash": a.hash,
                **({"error": a.error[:300]} if a.error else {})}
            for k, a in sorted(self.applied.items())
        }  # fmt: skip
