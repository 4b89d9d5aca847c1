"""The broker's Prometheus metrics: one registry per daemon, no globals.

Serving them over HTTP is an adapter's job (adapters/metrics_http.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from broker.storage.audit import AuditEvent

# SFTP audit actions counted as metrics: action -> (counter attribute, label when no org)
_SFTP_COUNTED = {"login": "sftp_logins", "login_failed": "sftp_login_failures",
                 "preauth_error": "sftp_login_failures", "ban": "sftp_bans"}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.files = Counter("kela_broker_input_files", "Input files taken in, by verdict",
                             ["source", "status"], registry=r)
        self.items = Gauge("kela_broker_notifications", "Assignments by state",
                           ["state"], registry=r)
        self.deliveries = Counter("kela_broker_deliveries", "Delivery files written",
                                  ["kind"], registry=r)
        self.release_lag = Histogram(
            "kela_broker_release_lag_seconds",
            "How late a release pass ran after its earliest due time",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 15, 60, 300, 3600), registry=r)
        self.last_pass = Gauge("kela_broker_last_release_pass_timestamp",
                               "Unix time of the last release pass", registry=r)
        self.poison = Counter("kela_broker_poison_files",
                              "Input files quarantined after repeated failed handlings",
                              ["source"], registry=r)
        self.delivery_failures = Counter(
            "kela_broker_delivery_failures",
            "Delivery writes that failed (the delivery stays pending and is retried)",
            ["organisation"], registry=r)
        self.org_failing = Gauge(
            "kela_broker_organisation_failing",
            "1 while an organisation's deliveries or pushes keep failing", ["organisation"],
            registry=r)
        self.push_attempts = Counter("kela_broker_push_attempts",
                                     "Push runs to organisations' own SFTP servers",
                                     ["organisation"], registry=r)
        self.push_failures = Counter("kela_broker_push_failures", "Push runs that failed",
                                     ["organisation"], registry=r)
        self.push_backlog_age = Gauge(
            "kela_broker_push_backlog_age_seconds",
            "Age of the oldest released file not yet pushed", ["organisation"], registry=r)
        self.thread_restarts = Counter("kela_broker_thread_restarts",
                                       "Background threads found dead and restarted",
                                       ["thread"], registry=r)
        self.healthy = Gauge("kela_broker_healthy", "1 when /healthz says ok", registry=r)
        # Labelled by organisation; "-" for unknown users and pre-login errors (an
        # attacker's user names must not become label values).
        self.sftp_logins = Counter("kela_broker_sftp_logins", "Successful SFTP logins",
                                   ["organisation"], registry=r)
        self.sftp_login_failures = Counter(
            "kela_broker_sftp_login_failures",
            "Failed SFTP logins and protocol errors before login", ["organisation"], registry=r)
        self.sftp_bans = Counter("kela_broker_sftp_bans",
                                 "Bans started after repeated failures", ["organisation"],
                                 registry=r)
        self.sftp_sessions = Gauge("kela_broker_sftp_sessions",
                                   "SFTP sessions logged in now", ["organisation"], registry=r)
        self.sftp_bytes = Counter("kela_broker_sftp_bytes",
                                  "File bytes downloaded (out) and uploaded (in)",
                                  ["organisation", "direction"], registry=r)

    def observe_sftp(self, event: AuditEvent) -> None:
        """Count an SFTP server audit event (call from the server's on_event)."""
        name = _SFTP_COUNTED.get(event.action)
        if name is not None:
            counter: Counter = getattr(self, name)
            counter.labels(organisation=event.org or "-").inc()
        if event.action in ("login", "logout") and event.org:
            self.sftp_sessions.labels(organisation=event.org).inc(
                1 if event.action == "login" else -1)
        elif event.action in ("download", "upload") and event.org and event.size:
            direction = "out" if event.action == "download" else "in"
            self.sftp_bytes.labels(organisation=event.org, direction=direction).inc(event.size)
