#!/usr/bin/env python3
"""Builds knockgate's Grafana dashboards (deploy/grafana/dashboards/*.json) from the
panel list below: one place that names every query, so a query and the metric it reads
cannot drift apart unnoticed. `--check` fails when the committed JSON differs from what
this script makes. `tests/tests/telemetry.rs` runs every query below against
VictoriaMetrics after a real run and fails on any that returns nothing.

Metric names are as a Prometheus-compatible store shows OpenTelemetry metrics with
Prometheus naming (VictoriaMetrics `-opentelemetry.usePrometheusNaming`, the
Collector's prometheus exporters): dots become underscores, units and `_total` are
appended, resource attributes become labels (`service_name`, `service_instance_id`).
"""

import json
import pathlib
import sys

SCHEMA_VERSION = 41
HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "dashboards"

METRICS_DS = {"type": "prometheus", "uid": "${metrics}"}
AGENT = 'service_name="knockgate-agent"'
CONTROLLER = 'service_name="knockgate-controller"'
GW = AGENT + ',service_instance_id=~"$gateway"'


def q(expr, legend="__auto"):
    return {"expr": expr, "legendFormat": legend}


def panel(title, kind, targets, unit="short", description=""):
    return {"title": title, "type": kind, "targets": targets, "unit": unit,
            "description": description}


DASHBOARDS = {
    "knockgate-fleet": {
        "title": "knockgate / Fleet overview",
        "gateway_var": False,
        "panels": [
            panel("Agents connected", "stat",
                  [q("sum(knockgate_agents_connected)", "connected")],
                  description="Agents holding a sync stream, over all controller replicas."),
            panel("Sync lag per gateway (config versions behind)", "timeseries",
                  [q("scalar(max(knockgate_config_version{" + CONTROLLER + "}))"
                     " - max by (service_instance_id) (knockgate_config_version{" + AGENT + "})",
                     "{{service_instance_id}}")],
                  description="The controller's config version minus the one each agent applied."),
            panel("Decisions per gateway", "timeseries",
                  [q("sum by (service_instance_id) (rate(knockgate_events_total{" + AGENT
                     + "}[$__rate_interval]))", "{{service_instance_id}}")], "ops"),
            panel("Grants opened per gateway", "timeseries",
                  [q("sum by (service_instance_id) (rate(knockgate_events_total{" + AGENT
                     + ',event=~"grant.opened|grant.extended"}[$__rate_interval]))',
                     "{{service_instance_id}}")], "ops"),
            panel("Refusals by reason", "timeseries",
                  [q("sum by (reason) (rate(knockgate_events_total{" + AGENT
                     + ',event=~"spa.rejected|knock.rejected|knock.reset|grant.failed"}'
                     "[$__rate_interval]))", "{{reason}}")], "ops"),
            panel("Top refused (by policy, where one is known)", "table",
                  [q("topk(10, sum by (policy, event) (increase(knockgate_events_total{"
                     + AGENT + ',event=~"spa.rejected|knock.rejected|grant.failed"}[$__range])))')]),
            panel("One-time key claim latency", "timeseries",
                  [q("histogram_quantile(0.5, sum by (le) "
                     "(rate(knockgate_otk_claim_duration_seconds_bucket[$__rate_interval])))", "p50"),
                   q("histogram_quantile(0.99, sum by (le) "
                     "(rate(knockgate_otk_claim_duration_seconds_bucket[$__rate_interval])))", "p99")],
                  "s"),
        ],
    },
    "knockgate-gateway": {
        "title": "knockgate / Gateway",
        "gateway_var": True,
        "panels": [
            panel("Knock-to-open latency", "timeseries",
                  [q("histogram_quantile(" + p + ", sum by (le) "
                     "(rate(knockgate_knock_to_open_duration_seconds_bucket{" + GW
                     + "}[$__rate_interval])))", "p" + p[2:].ljust(2, "0"))
                   for p in ("0.5", "0.9", "0.99")], "s",
                  "From the capture of the knock or SPA packet to the grant in the firewall."),
            panel("Grants open", "timeseries",
                  [q("sum by (service_instance_id) (knockgate_grants_open{" + GW + "})",
                     "{{service_instance_id}}")]),
            panel("Decisions by kind", "timeseries",
                  [q("sum by (event) (rate(knockgate_events_total{" + GW
                     + "}[$__rate_interval]))", "{{event}}")], "ops"),
            panel("Captured packets and capture drops", "timeseries",
                  [q("sum(rate(knockgate_capture_packets_total{" + GW + "}[$__rate_interval]))",
                     "captured"),
                   q("sum(rate(knockgate_capture_dropped_total{" + GW + "}[$__rate_interval]))",
                     "dropped (engine behind)")], "pps"),
            panel("Firewall repairs", "stat",
                  [q("sum(increase(knockgate_events_total{" + GW
                     + ',event=~"firewall.repaired|firewall.repair_failed"}[$__range]))',
                     "repairs")],
                  description="Someone else changed the agent's table; it was put back."),
            panel("Report spool depth", "timeseries",
                  [q("max by (service_instance_id) (knockgate_spool_depth{" + GW + "})",
                     "{{service_instance_id}}")],
                  description="Events waiting to reach the controller."),
            panel("Config version applied", "stat",
                  [q("max by (service_instance_id) (knockgate_config_version{" + GW + "})",
                     "{{service_instance_id}}")]),
        ],
    },
    "knockgate-controller": {
        "title": "knockgate / Controller",
        "gateway_var": False,
        "panels": [
            panel("RPC rate by method", "timeseries",
                  [q("sum by (rpc_method) (rate(rpc_server_call_duration_seconds_count{"
                     + CONTROLLER + "}[$__rate_interval]))", "{{rpc_method}}")], "reqps"),
            panel("RPC errors by method and code", "timeseries",
                  [q("sum by (rpc_method, rpc_grpc_status_code) "
                     "(rate(rpc_server_call_duration_seconds_count{" + CONTROLLER
                     + ',rpc_grpc_status_code!="0"}[$__rate_interval]))',
                     "{{rpc_method}} {{rpc_grpc_status_code}}")], "reqps"),
            panel("RPC latency p99 by method", "timeseries",
                  [q("histogram_quantile(0.99, sum by (le, rpc_method) "
                     "(rate(rpc_server_call_duration_seconds_bucket{" + CONTROLLER
                     + "}[$__rate_interval])))", "{{rpc_method}}")], "s"),
            panel("Store latency p99 by operation", "timeseries",
                  [q("histogram_quantile(0.99, sum by (le, operation) "
                     "(rate(knockgate_store_duration_seconds_bucket{" + CONTROLLER
                     + "}[$__rate_interval])))", "{{operation}}")], "s",
                  "The store's hot operations: snapshot loads, audit appends, claims, "
                  "applied-version writes, agent contacts."),
            panel("Audit rows by kind", "timeseries",
                  [q("sum by (kind) (rate(knockgate_audit_rows_total[$__rate_interval]))",
                     "{{kind}}")], "ops"),
            panel("One-time key claims by outcome", "timeseries",
                  [q("sum by (outcome) (rate(knockgate_otk_claims_total[$__rate_interval]))",
                     "{{outcome}}")], "ops"),
            panel("Agents connected per replica", "timeseries",
                  [q("sum by (service_instance_id, instance) (knockgate_agents_connected)",
                     "connected")]),
            panel("Config version served", "stat",
                  [q("max(knockgate_config_version{" + CONTROLLER + "})", "version")]),
        ],
    },
    "knockgate-security": {
        "title": "knockgate / Security",
        "gateway_var": False,
        "panels": [
            panel("SPA refusals by reason", "timeseries",
                  [q("sum by (reason) (rate(knockgate_events_total{" + AGENT
                     + ',event="spa.rejected"}[$__rate_interval]))', "{{reason}}")], "pps",
                  "Every refused packet, counted even when a flood is only summarized in the log."),
            panel("Packets sealed for another gateway, replays and unknown keys", "table",
                  [q("sum by (service_instance_id, reason) (increase(knockgate_events_total{"
                     + AGENT + ',event="spa.rejected",reason=~"wrong_gateway|replay|unknown_key|'
                     'bad_tag"}[$__range]))')]),
            panel("Authentication and enrolment refusals at the controller", "timeseries",
                  [q("sum by (kind) (rate(knockgate_audit_rows_total{"
                     'kind=~"auth.refused|enrol.refused|otk.refused|otk.reuse|config.refused"}'
                     "[$__rate_interval]))", "{{kind}}")], "ops"),
            panel("Refused calls at the controller", "timeseries",
                  [q("sum by (rpc_grpc_status_code) (rate(rpc_server_call_duration_seconds_count{"
                     + CONTROLLER + ',rpc_grpc_status_code=~"7|16"}[$__rate_interval]))',
                     "{{rpc_grpc_status_code}}")], "reqps",
                  "PERMISSION_DENIED (7) and UNAUTHENTICATED (16)."),
        ],
    },
}


def build(uid, spec):
    panels = []
    for i, p in enumerate(spec["panels"]):
        width = 12
        panels.append({
            "id": i + 1,
            "type": p["type"],
            "title": p["title"],
            "description": p["description"],
            "datasource": METRICS_DS,
            "gridPos": {"h": 8, "w": width, "x": (i % 2) * width, "y": (i // 2) * 8},
            "fieldConfig": {"defaults": {"unit": p["unit"]}, "overrides": []},
            "options": {},
            "targets": [dict(t, refId=chr(ord("A") + j), datasource=METRICS_DS)
                        for j, t in enumerate(p["targets"])],
        })
    variables = [{
        "name": "metrics", "label": "Metrics", "type": "datasource",
        "query": "prometheus", "current": {}, "hide": 0,
    }]
    if spec["gateway_var"]:
        variables.append({
            "name": "gateway", "label": "Gateway", "type": "query",
            "datasource": METRICS_DS,
            "query": {"query": "label_values(knockgate_grants_open, service_instance_id)",
                      "refId": "gateways"},
            "definition": "label_values(knockgate_grants_open, service_instance_id)",
            "includeAll": True, "multi": True, "refresh": 2, "current": {},
        })
    return {
        "uid": uid,
        "title": spec["title"],
        "tags": ["knockgate"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": False,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": variables},
        "annotations": {"list": []},
        # From any panel's time range to the traces of the same range.
        "links": [{
            "title": "Traces of this time range", "type": "link", "icon": "external link",
            "keepTime": True, "targetBlank": True,
            "url": "/explore?left=" + json.dumps(
                {"datasource": "knockgate-traces",
                 "queries": [{"refId": "A", "queryType": "traceqlSearch",
                              "query": '{resource.service.name=~"knockgate.*"}'}]},
                separators=(",", ":")),
        }],
        "panels": panels,
    }


def render():
    return {f"{uid}.json": json.dumps(build(uid, spec), indent=2, sort_keys=True) + "\n"
            for uid, spec in DASHBOARDS.items()}


def main():
    files = render()
    if sys.argv[1:] == ["--check"]:
        stale = [n for n, text in files.items()
                 if not (OUT / n).exists() or (OUT / n).read_text() != text]
        extra = sorted(p.name for p in OUT.glob("*.json") if p.name not in files)
        if stale or extra:
            sys.exit(f"dashboards out of date: {stale + extra}; run deploy/grafana/build.py")
        return
    OUT.mkdir(exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text)


if __name__ == "__main__":
    main()
