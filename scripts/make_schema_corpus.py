"""Write the structured-output test corpus: real-world-style JSON schemas, one per line.

The schemas are written here (no file copied from a schema collection): API payloads, Kubernetes-
like objects, events, articles, configuration files, forms and records, with what such schemas
use in the wild -- numeric bounds, patterns (anchored and not, with ``\\d`` / ``\\w`` escapes),
formats, tuple items (``prefixItems``), local ``$ref``s (``$defs`` and ``definitions``, recursive
too), ``allOf`` / ``oneOf`` / ``anyOf``, enums and consts, nullable types, nested arrays.

Usage::

    python scripts/make_schema_corpus.py [OUT]   # default tests/data/schemas.jsonl

Each line is ``{"name": ..., "domain": ..., "schema": {...}}``; the output is deterministic.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "schemas.jsonl"

S = dict[str, Any]

# -- building blocks (field shapes common in published schemas) ------------------------------

UUID: S = {
    "type": "string",
    "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
}
UUID_FORMAT: S = {"type": "string", "format": "uuid"}
EMAIL: S = {"type": "string", "format": "email", "maxLength": 254}
EMAIL_PATTERN: S = {"type": "string", "pattern": "^[\\w.+-]+@[\\w-]+\\.[\\w.-]+$"}
DATE_TIME: S = {"type": "string", "format": "date-time"}
DATE: S = {"type": "string", "format": "date"}
DATE_PATTERN: S = {"type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}$"}
URL: S = {"type": "string", "format": "uri"}
SEMVER: S = {"type": "string", "pattern": "^(0|[1-9]\\d*)\\.(0|[1-9]\\d*)\\.(0|[1-9]\\d*)$"}
COUNTRY: S = {"type": "string", "pattern": "^[A-Z]{2}$"}
CURRENCY: S = {"enum": ["USD", "EUR", "GBP", "JPY", "CHF", "CNY"]}
PORT: S = {"type": "integer", "minimum": 1, "maximum": 65535}
PERCENT: S = {"type": "number", "minimum": 0, "maximum": 100}
LATITUDE: S = {"type": "number", "minimum": -90, "maximum": 90}
LONGITUDE: S = {"type": "number", "minimum": -180, "maximum": 180}
K8S_NAME: S = {
    "type": "string",
    "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    "maxLength": 63,
}
LABELS: S = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}}
HEX_COLOUR: S = {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$"}
PHONE: S = {"type": "string", "pattern": "^\\+?[1-9]\\d{6,14}$"}
CIDR = "^(\\d{1,3}\\.){3}\\d{1,3}/\\d{1,2}$"
SLUG: S = {"type": "string", "pattern": "[a-z0-9-]+", "maxLength": 40}
SHA256: S = {"type": "string", "pattern": "^[a-f0-9]{64}$"}
MONEY: S = {"type": "number", "minimum": 0, "multipleOf": 0.01}
PRIORITY: S = {"enum": ["low", "medium", "high", "critical"]}
TAGS: S = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": 24},
    "maxItems": 8,
    "uniqueItems": True,
}


def obj(
    properties: S, required: list[str] | None = None, *, closed: bool = True, **extra: Any
) -> S:
    """An object schema; ``required`` defaults to every property."""
    schema: S = {"type": "object", "properties": properties}
    schema["required"] = list(properties) if required is None else required
    if closed:
        schema["additionalProperties"] = False
    schema.update(extra)
    return schema


def array(items: S, low: int | None = None, high: int | None = None, **extra: Any) -> S:
    """An array schema with optional item-count bounds."""
    schema: S = {"type": "array", "items": items}
    if low is not None:
        schema["minItems"] = low
    if high is not None:
        schema["maxItems"] = high
    schema.update(extra)
    return schema


def string(low: int | None = None, high: int | None = None, **extra: Any) -> S:
    """A string schema with optional length bounds."""
    schema: S = {"type": "string"}
    if low is not None:
        schema["minLength"] = low
    if high is not None:
        schema["maxLength"] = high
    schema.update(extra)
    return schema


def integer(low: int | None = None, high: int | None = None, **extra: Any) -> S:
    """An integer schema with optional bounds."""
    schema: S = {"type": "integer"}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    schema.update(extra)
    return schema


def nullable(schema: S) -> S:
    """``schema`` or null (the ``anyOf`` spelling that generators such as pydantic emit)."""
    return {"anyOf": [schema, {"type": "null"}]}


ADDRESS: S = obj(
    {
        "street": string(1, 80),
        "city": string(1, 60),
        "postal_code": {"type": "string", "pattern": "^[A-Z0-9 -]{3,10}$"},
        "country": COUNTRY,
    },
    ["street", "city", "country"],
)
PERSON: S = obj(
    {"name": string(1, 80), "email": EMAIL, "phone": PHONE},
    ["name", "email"],
)
PAGINATION: S = obj(
    {"page": integer(1), "per_page": integer(1, 100), "total": integer(0)},
)


# -- the corpus -------------------------------------------------------------------------------


def corpus() -> list[tuple[str, str, S]]:
    """Every ``(name, domain, schema)`` of the corpus, in a fixed order."""
    items: list[tuple[str, str, S]] = []

    def add(name: str, domain: str, schema: S) -> None:
        items.append((name, domain, {"title": name, **schema}))

    # -- API payloads -----------------------------------------------------------------------
    add(
        "user_create_request",
        "api",
        obj(
            {
                "username": {"type": "string", "pattern": "^[a-zA-Z0-9_]{3,20}$"},
                "email": EMAIL,
                "age": integer(13, 120),
                "newsletter": {"type": "boolean"},
            },
            ["username", "email"],
        ),
    )
    add(
        "user_profile_response",
        "api",
        obj(
            {
                "id": UUID,
                "display_name": string(1, 50),
                "bio": nullable(string(0, 160)),
                "followers": integer(0),
                "verified": {"type": "boolean"},
                "address": ADDRESS,
            }
        ),
    )
    add(
        "paginated_users",
        "api",
        obj(
            {
                "data": array(obj({"id": integer(1), "name": string(1, 40)}), 0, 5),
                "pagination": PAGINATION,
            }
        ),
    )
    add(
        "error_response",
        "api",
        obj(
            {
                "error": obj(
                    {
                        "code": {"type": "string", "pattern": "^[A-Z_]+$"},
                        "message": string(1, 200),
                        "status": integer(400, 599),
                        "details": array(
                            obj({"field": string(1, 40), "issue": string(1, 80)}), 0, 3
                        ),
                    },
                    ["code", "message", "status"],
                ),
            }
        ),
    )
    add(
        "problem_details",
        "api",
        obj(
            {
                "type": URL,
                "title": string(1, 80),
                "status": integer(100, 599),
                "detail": string(0, 200),
                "instance": string(),
            },
            ["title", "status"],
        ),
    )
    add(
        "payment_intent",
        "api",
        obj(
            {
                "id": {"type": "string", "pattern": "^pi_[A-Za-z0-9]{8,24}$"},
                "amount": integer(50, 99999999),
                "currency": CURRENCY,
                "status": {
                    "enum": ["requires_payment_method", "processing", "succeeded", "canceled"]
                },
                "metadata": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "maxProperties": 5,
                },
            },
            ["id", "amount", "currency", "status"],
        ),
    )
    add(
        "refund_request",
        "api",
        obj(
            {
                "payment_id": string(1, 40),
                "amount": MONEY,
                "reason": {"enum": ["duplicate", "fraudulent", "requested_by_customer"]},
            }
        ),
    )
    add(
        "oauth_token_response",
        "api",
        obj(
            {
                "access_token": string(16, 256),
                "token_type": {"const": "Bearer"},
                "expires_in": integer(60, 86400),
                "refresh_token": string(16, 256),
                "scope": {"type": "string", "pattern": "^[a-z:_]+( [a-z:_]+)*$"},
            },
            ["access_token", "token_type", "expires_in"],
        ),
    )
    add(
        "search_query",
        "api",
        obj(
            {
                "q": string(1, 120),
                "filters": obj(
                    {
                        "category": array(
                            {"enum": ["books", "music", "film", "games"]}, 0, 4, uniqueItems=True
                        ),
                        "price": obj({"min": MONEY, "max": MONEY}, []),
                        "in_stock": {"type": "boolean"},
                    },
                    [],
                ),
                "sort": {"enum": ["relevance", "price_asc", "price_desc", "newest"]},
                "limit": integer(1, 50),
            },
            ["q"],
        ),
    )
    add(
        "search_results",
        "api",
        obj(
            {
                "query": string(1, 120),
                "took_ms": integer(0, 60000),
                "hits": array(
                    obj(
                        {
                            "id": string(1, 24),
                            "score": {"type": "number", "minimum": 0, "maximum": 1},
                            "title": string(1, 80),
                            "highlights": array(string(1, 60), 0, 3),
                        }
                    ),
                    0,
                    4,
                ),
            }
        ),
    )
    add(
        "graphql_error",
        "api",
        obj(
            {
                "message": string(1, 160),
                "locations": array(obj({"line": integer(1), "column": integer(1)}), 1, 3),
                "path": array(
                    {"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]}, 1, 6
                ),
            },
            ["message"],
        ),
    )
    add(
        "batch_job_request",
        "api",
        obj(
            {
                "job_id": UUID_FORMAT,
                "inputs": array(URL, 1, 10),
                "priority": integer(0, 9),
                "callback_url": URL,
                "retry": obj(
                    {
                        "max_attempts": integer(1, 10),
                        "backoff_seconds": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "maximum": 3600,
                        },
                    }
                ),
            },
            ["job_id", "inputs"],
        ),
    )
    add(
        "rate_limit_status",
        "api",
        obj(
            {
                "limit": integer(1),
                "remaining": integer(0),
                "reset": integer(0),
                "window": {"enum": ["second", "minute", "hour", "day"]},
            }
        ),
    )
    add(
        "file_upload_response",
        "api",
        obj(
            {
                "file_id": UUID,
                "filename": {"type": "string", "pattern": "^[^/\\\\]{1,255}$"},
                "bytes": integer(0, 5368709120),
                "sha256": SHA256,
                "mime_type": {"type": "string", "pattern": "^[a-z]+/[a-z0-9.+-]+$"},
            }
        ),
    )
    add(
        "webhook_subscription",
        "api",
        obj(
            {
                "url": URL,
                "events": array(
                    {"enum": ["order.created", "order.paid", "order.shipped", "order.refunded"]},
                    1,
                    4,
                    uniqueItems=True,
                ),
                "secret": string(32, 64),
                "active": {"type": "boolean"},
            },
            ["url", "events"],
        ),
    )
    add(
        "chat_completion_message",
        "api",
        obj(
            {
                "role": {"enum": ["system", "user", "assistant", "tool"]},
                "content": nullable(string(0, 400)),
                "tool_calls": array(
                    obj(
                        {
                            "id": string(1, 40),
                            "type": {"const": "function"},
                            "function": obj(
                                {
                                    "name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
                                    "arguments": string(),
                                }
                            ),
                        }
                    ),
                    0,
                    3,
                ),
            },
            ["role", "content"],
        ),
    )
    add(
        "geocode_result",
        "api",
        obj(
            {
                "formatted_address": string(1, 200),
                "location": obj({"lat": LATITUDE, "lng": LONGITUDE}),
                "accuracy": {
                    "enum": ["rooftop", "range_interpolated", "geometric_center", "approximate"]
                },
                "components": array(
                    obj({"long_name": string(1, 60), "types": array(string(1, 30), 1, 3)}), 0, 4
                ),
            }
        ),
    )
    add(
        "weather_forecast",
        "api",
        obj(
            {
                "city": string(1, 60),
                "days": array(
                    obj(
                        {
                            "date": DATE_PATTERN,
                            "high_c": {"type": "number", "minimum": -90, "maximum": 60},
                            "low_c": {"type": "number", "minimum": -90, "maximum": 60},
                            "precipitation_mm": {"type": "number", "minimum": 0},
                            "condition": {
                                "enum": ["sunny", "cloudy", "rain", "snow", "storm", "fog"]
                            },
                        }
                    ),
                    1,
                    7,
                ),
            }
        ),
    )
    add(
        "exchange_rates",
        "api",
        obj(
            {
                "base": CURRENCY,
                "date": DATE,
                "rates": {
                    "type": "object",
                    "propertyNames": {"pattern": "^[A-Z]{3}$"},
                    "additionalProperties": {"type": "number", "exclusiveMinimum": 0},
                },
            }
        ),
    )
    add(
        "stock_quote",
        "api",
        obj(
            {
                "symbol": {"type": "string", "pattern": "^[A-Z]{1,5}(\\.[A-Z])?$"},
                "price": {"type": "number", "exclusiveMinimum": 0},
                "change_percent": {"type": "number", "minimum": -100, "maximum": 1000},
                "volume": integer(0),
                "market": {"enum": ["NYSE", "NASDAQ", "LSE", "TSE"]},
            }
        ),
    )

    # -- Kubernetes-like objects ------------------------------------------------------------
    metadata = obj(
        {
            "name": K8S_NAME,
            "namespace": K8S_NAME,
            "labels": LABELS,
            "annotations": LABELS,
        },
        ["name"],
    )
    container = obj(
        {
            "name": K8S_NAME,
            "image": {"type": "string", "pattern": "^[a-z0-9./-]+(:[\\w.-]+)?$"},
            "ports": array(
                obj(
                    {"containerPort": PORT, "protocol": {"enum": ["TCP", "UDP", "SCTP"]}},
                    ["containerPort"],
                ),
                0,
                4,
            ),
            "env": array(
                obj(
                    {
                        "name": {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]*$"},
                        "value": string(0, 100),
                    }
                ),
                0,
                4,
            ),
            "resources": obj(
                {
                    "limits": obj(
                        {
                            "cpu": {"type": "string", "pattern": "^\\d+m?$"},
                            "memory": {"type": "string", "pattern": "^\\d+(Mi|Gi)$"},
                        },
                        [],
                    ),
                },
                [],
            ),
        },
        ["name", "image"],
    )
    add(
        "k8s_pod",
        "kubernetes",
        obj(
            {
                "apiVersion": {"const": "v1"},
                "kind": {"const": "Pod"},
                "metadata": metadata,
                "spec": obj(
                    {
                        "containers": array(container, 1, 3),
                        "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
                    },
                    ["containers"],
                ),
            }
        ),
    )
    add(
        "k8s_deployment",
        "kubernetes",
        obj(
            {
                "apiVersion": {"const": "apps/v1"},
                "kind": {"const": "Deployment"},
                "metadata": metadata,
                "spec": obj(
                    {
                        "replicas": integer(0, 100),
                        "selector": obj({"matchLabels": LABELS}),
                        "template": obj(
                            {
                                "metadata": obj({"labels": LABELS}),
                                "spec": obj({"containers": array(container, 1, 2)}, ["containers"]),
                            }
                        ),
                        "strategy": obj({"type": {"enum": ["RollingUpdate", "Recreate"]}}),
                    },
                    ["replicas", "selector", "template"],
                ),
            }
        ),
    )
    add(
        "k8s_service",
        "kubernetes",
        obj(
            {
                "apiVersion": {"const": "v1"},
                "kind": {"const": "Service"},
                "metadata": metadata,
                "spec": obj(
                    {
                        "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                        "selector": LABELS,
                        "ports": array(
                            obj(
                                {
                                    "port": PORT,
                                    "targetPort": {"anyOf": [PORT, K8S_NAME]},
                                    "nodePort": integer(30000, 32767),
                                },
                                ["port"],
                            ),
                            1,
                            4,
                        ),
                    },
                    ["ports"],
                ),
            }
        ),
    )
    add(
        "k8s_configmap",
        "kubernetes",
        obj(
            {
                "apiVersion": {"const": "v1"},
                "kind": {"const": "ConfigMap"},
                "metadata": metadata,
                "data": {
                    "type": "object",
                    "patternProperties": {"^[-._a-zA-Z0-9]+$": {"type": "string"}},
                    "additionalProperties": False,
                },
            }
        ),
    )
    add(
        "k8s_ingress_rule",
        "kubernetes",
        obj(
            {
                "host": {"type": "string", "pattern": "^([a-z0-9-]+\\.)+[a-z]{2,}$"},
                "paths": array(
                    obj(
                        {
                            "path": {"type": "string", "pattern": "^/"},
                            "pathType": {"enum": ["Prefix", "Exact", "ImplementationSpecific"]},
                            "backend": obj(
                                {"service": obj({"name": K8S_NAME, "port": obj({"number": PORT})})}
                            ),
                        }
                    ),
                    1,
                    3,
                ),
            }
        ),
    )
    add(
        "k8s_cronjob_schedule",
        "kubernetes",
        obj(
            {
                "schedule": {"type": "string", "pattern": "^(\\S+\\s){4}\\S+$"},
                "concurrencyPolicy": {"enum": ["Allow", "Forbid", "Replace"]},
                "successfulJobsHistoryLimit": integer(0, 10),
                "suspend": {"type": "boolean"},
            },
            ["schedule"],
        ),
    )
    add(
        "k8s_hpa",
        "kubernetes",
        obj(
            {
                "minReplicas": integer(1, 10),
                "maxReplicas": integer(1, 100),
                "metrics": array(
                    obj(
                        {
                            "type": {"const": "Resource"},
                            "resource": obj(
                                {
                                    "name": {"enum": ["cpu", "memory"]},
                                    "targetAverageUtilization": integer(1, 100),
                                }
                            ),
                        }
                    ),
                    1,
                    2,
                ),
            }
        ),
    )
    add(
        "k8s_resource_quota",
        "kubernetes",
        obj(
            {
                "hard": obj(
                    {
                        "pods": {"type": "string", "pattern": "^\\d+$"},
                        "requests.cpu": {"type": "string", "pattern": "^\\d+(\\.\\d+)?m?$"},
                        "requests.memory": {"type": "string", "pattern": "^\\d+(Ki|Mi|Gi)$"},
                    },
                    [],
                ),
            }
        ),
    )
    add(
        "k8s_probe",
        "kubernetes",
        {
            "type": "object",
            "properties": {
                "httpGet": obj({"path": string(1, 60), "port": PORT}),
                "tcpSocket": obj({"port": PORT}),
                "exec": obj({"command": array(string(1, 40), 1, 4)}),
                "initialDelaySeconds": integer(0, 300),
                "periodSeconds": integer(1, 300),
                "failureThreshold": integer(1, 10),
            },
            "oneOf": [
                {"required": ["httpGet"]},
                {"required": ["tcpSocket"]},
                {"required": ["exec"]},
            ],
            "additionalProperties": False,
        },
    )
    add(
        "k8s_toleration",
        "kubernetes",
        obj(
            {
                "key": string(1, 63),
                "operator": {"enum": ["Exists", "Equal"]},
                "value": string(0, 63),
                "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
                "tolerationSeconds": integer(0),
            },
            ["key", "operator"],
        ),
    )
    add(
        "k8s_network_policy",
        "kubernetes",
        obj(
            {
                "podSelector": obj({"matchLabels": LABELS}),
                "policyTypes": array({"enum": ["Ingress", "Egress"]}, 1, 2, uniqueItems=True),
                "ingress": array(
                    obj(
                        {
                            "from": array(
                                obj(
                                    {
                                        "ipBlock": obj(
                                            {
                                                "cidr": {
                                                    "type": "string",
                                                    "pattern": CIDR,
                                                }
                                            }
                                        )
                                    }
                                ),
                                1,
                                2,
                            ),
                            "ports": array(
                                obj({"port": PORT, "protocol": {"enum": ["TCP", "UDP"]}}), 1, 2
                            ),
                        }
                    ),
                    0,
                    2,
                ),
            }
        ),
    )
    add(
        "k8s_custom_resource",
        "kubernetes",
        {
            "type": "object",
            "$defs": {
                "condition": obj(
                    {
                        "type": string(1, 40),
                        "status": {"enum": ["True", "False", "Unknown"]},
                        "lastTransitionTime": DATE_TIME,
                        "reason": {"type": "string", "pattern": "^[A-Z][A-Za-z]*$"},
                    },
                    ["type", "status"],
                ),
            },
            "properties": {
                "apiVersion": {"type": "string", "pattern": "^[a-z.]+/v\\d+(alpha\\d+|beta\\d+)?$"},
                "kind": {"type": "string", "pattern": "^[A-Z][A-Za-z]+$"},
                "metadata": metadata,
                "status": obj(
                    {
                        "conditions": array({"$ref": "#/$defs/condition"}, 0, 3),
                        "observedGeneration": integer(0),
                    },
                    [],
                ),
            },
            "required": ["apiVersion", "kind", "metadata"],
            "additionalProperties": False,
        },
    )

    # -- events -----------------------------------------------------------------------------
    envelope: S = {
        "specversion": {"const": "1.0"},
        "id": string(1, 64),
        "source": string(1, 120),
        "type": {"type": "string", "pattern": "^[a-z]+(\\.[a-z_]+)+$"},
        "time": DATE_TIME,
    }
    add(
        "cloudevent_order_created",
        "events",
        obj(
            {
                **envelope,
                "data": obj(
                    {
                        "order_id": UUID,
                        "total": MONEY,
                        "currency": CURRENCY,
                        "items": integer(1, 50),
                    }
                ),
            }
        ),
    )
    add(
        "cloudevent_generic",
        "events",
        obj(
            {
                **envelope,
                "datacontenttype": {"enum": ["application/json", "text/plain"]},
                "data": {},
            },
            ["specversion", "id", "source", "type"],
        ),
    )
    add(
        "audit_log_entry",
        "events",
        obj(
            {
                "timestamp": DATE_TIME,
                "actor": obj(
                    {"id": string(1, 40), "type": {"enum": ["user", "service", "system"]}}
                ),
                "action": {"type": "string", "pattern": "^[a-z]+\\.[a-z]+$"},
                "resource": string(1, 120),
                "outcome": {"enum": ["success", "failure"]},
                "ip": {"type": "string", "format": "ipv4"},
            }
        ),
    )
    add(
        "click_event",
        "events",
        obj(
            {
                "event": {"const": "click"},
                "session_id": UUID,
                "element": string(1, 60),
                "x": integer(0, 10000),
                "y": integer(0, 10000),
                "viewport": {
                    "type": "array",
                    "prefixItems": [integer(1, 10000), integer(1, 10000)],
                    "items": False,
                    "minItems": 2,
                },
            }
        ),
    )
    add(
        "page_view",
        "events",
        obj(
            {
                "url": URL,
                "referrer": nullable(URL),
                "duration_ms": integer(0, 3600000),
                "utm": obj({"source": SLUG, "medium": SLUG, "campaign": SLUG}, []),
            },
            ["url", "duration_ms"],
        ),
    )
    add(
        "iot_sensor_reading",
        "events",
        obj(
            {
                "device_id": {"type": "string", "pattern": "^dev-\\d{6}$"},
                "temperature_c": {"type": "number", "minimum": -40, "maximum": 125},
                "humidity": PERCENT,
                "battery": integer(0, 100),
                "location": {
                    "type": "array",
                    "prefixItems": [LATITUDE, LONGITUDE],
                    "minItems": 2,
                    "maxItems": 2,
                },
            }
        ),
    )
    add(
        "log_record",
        "events",
        obj(
            {
                "ts": DATE_TIME,
                "level": {"enum": ["DEBUG", "INFO", "WARN", "ERROR", "FATAL"]},
                "logger": {"type": "string", "pattern": "^[\\w.]+$"},
                "message": string(1, 300),
                "trace_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "attributes": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "number", "boolean"]},
                },
            },
            ["ts", "level", "message"],
        ),
    )
    add(
        "span",
        "events",
        obj(
            {
                "trace_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "span_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                "parent_span_id": nullable({"type": "string", "pattern": "^[0-9a-f]{16}$"}),
                "name": string(1, 80),
                "kind": {"enum": ["INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"]},
                "start_time_unix_nano": integer(0),
                "duration_ns": integer(0),
                "status": obj({"code": integer(0, 2), "message": string(0, 100)}, ["code"]),
            }
        ),
    )
    add(
        "git_push_event",
        "events",
        obj(
            {
                "ref": {"type": "string", "pattern": "^refs/(heads|tags)/.+$"},
                "before": {"type": "string", "pattern": "^[0-9a-f]{40}$"},
                "after": {"type": "string", "pattern": "^[0-9a-f]{40}$"},
                "commits": array(
                    obj(
                        {
                            "id": {"type": "string", "pattern": "^[0-9a-f]{40}$"},
                            "message": string(1, 200),
                            "author": obj({"name": string(1, 60), "email": EMAIL}),
                            "added": array(string(1, 100), 0, 5),
                        }
                    ),
                    0,
                    3,
                ),
                "forced": {"type": "boolean"},
            }
        ),
    )
    add(
        "ci_job_status",
        "events",
        obj(
            {
                "job": string(1, 60),
                "status": {"enum": ["queued", "running", "passed", "failed", "cancelled"]},
                "duration_s": {"type": "number", "minimum": 0},
                "exit_code": nullable(integer(0, 255)),
                "artifacts": array(obj({"path": string(1, 120), "size": integer(0)}), 0, 4),
            },
            ["job", "status"],
        ),
    )
    add(
        "payment_webhook",
        "events",
        {
            "type": "object",
            "properties": {
                "event": {"enum": ["payment.succeeded", "payment.failed"]},
                "amount": integer(1),
                "failure_code": {"type": "string", "maxLength": 40},
            },
            "required": ["event", "amount"],
            "if": {"properties": {"event": {"const": "payment.failed"}}},
            "then": {"required": ["failure_code"]},
            "additionalProperties": False,
        },
    )
    add(
        "user_signup_event",
        "events",
        obj(
            {
                "event_type": {"const": "user.signup"},
                "occurred_at": DATE_TIME,
                "user": obj(
                    {"id": UUID, "email": EMAIL, "plan": {"enum": ["free", "pro", "team"]}}
                ),
                "referral_code": nullable({"type": "string", "pattern": "^[A-Z0-9]{6}$"}),
            }
        ),
    )
    add(
        "inventory_changed",
        "events",
        obj(
            {
                "sku": {"type": "string", "pattern": "^[A-Z]{3}-\\d{4,6}$"},
                "warehouse": {"enum": ["AMS1", "FRA2", "IAD1", "SIN1"]},
                "delta": integer(-10000, 10000),
                "on_hand": integer(0),
            }
        ),
    )
    add(
        "alert",
        "events",
        obj(
            {
                "alertname": string(1, 60),
                "severity": {"enum": ["info", "warning", "critical"]},
                "value": {"type": "number"},
                "threshold": {"type": "number"},
                "labels": LABELS,
                "startsAt": DATE_TIME,
            },
            ["alertname", "severity", "startsAt"],
        ),
    )
    add(
        "sensor_batch",
        "events",
        obj(
            {
                "device": string(1, 30),
                "samples": array(
                    {
                        "type": "array",
                        "prefixItems": [integer(0), {"type": "number"}],
                        "items": False,
                        "minItems": 2,
                    },
                    1,
                    10,
                ),
            }
        ),
    )

    # -- articles, content ------------------------------------------------------------------
    add(
        "news_article",
        "content",
        obj(
            {
                "headline": string(10, 110),
                "alternativeHeadline": string(0, 110),
                "author": array(obj({"name": string(1, 60), "url": URL}, ["name"]), 1, 3),
                "datePublished": DATE_TIME,
                "dateModified": DATE_TIME,
                "section": {
                    "enum": ["World", "Politics", "Business", "Tech", "Science", "Sport", "Culture"]
                },
                "wordCount": integer(50, 20000),
                "keywords": TAGS,
            },
            ["headline", "author", "datePublished", "section"],
        ),
    )
    add(
        "blog_post",
        "content",
        obj(
            {
                "title": string(1, 120),
                "slug": {"type": "string", "pattern": "^[a-z0-9]+(?:-[a-z0-9]+)*$"},
                "body_markdown": string(1, 2000),
                "draft": {"type": "boolean"},
                "tags": TAGS,
                "reading_time_min": integer(1, 60),
            },
            ["title", "slug", "body_markdown"],
        ),
    )
    add(
        "recipe",
        "content",
        obj(
            {
                "name": string(1, 80),
                "servings": integer(1, 24),
                "prep_minutes": integer(0, 600),
                "ingredients": array(
                    obj(
                        {
                            "item": string(1, 40),
                            "quantity": {"type": "number", "exclusiveMinimum": 0},
                            "unit": {"enum": ["g", "kg", "ml", "l", "tsp", "tbsp", "cup", "piece"]},
                        }
                    ),
                    1,
                    12,
                ),
                "steps": array(string(1, 200), 1, 10),
                "vegetarian": {"type": "boolean"},
            }
        ),
    )
    add(
        "book",
        "content",
        obj(
            {
                "title": string(1, 200),
                "isbn": {"type": "string", "pattern": "^(97[89])?\\d{9}[\\dX]$"},
                "authors": array(string(1, 80), 1, 4),
                "published_year": integer(1450, 2030),
                "pages": integer(1, 5000),
                "language": {"type": "string", "pattern": "^[a-z]{2}(-[A-Z]{2})?$"},
                "rating": {"type": "number", "minimum": 0, "maximum": 5, "multipleOf": 0.5},
            },
            ["title", "authors"],
        ),
    )
    add(
        "movie_review",
        "content",
        obj(
            {
                "movie": string(1, 100),
                "year": integer(1888, 2030),
                "stars": integer(1, 5),
                "verdict": {"enum": ["must-see", "worth it", "skip"]},
                "pros": array(string(1, 60), 0, 3),
                "cons": array(string(1, 60), 0, 3),
            }
        ),
    )
    add(
        "product_listing",
        "content",
        obj(
            {
                "sku": {"type": "string", "pattern": "^[A-Z0-9]{8}$"},
                "name": string(1, 100),
                "price": obj({"amount": MONEY, "currency": CURRENCY}),
                "dimensions_cm": {
                    "type": "array",
                    "prefixItems": [{"type": "number", "exclusiveMinimum": 0}] * 3,
                    "items": False,
                    "minItems": 3,
                },
                "colour": HEX_COLOUR,
                "stock": integer(0, 100000),
                "categories": array(array(string(1, 30), 1, 3), 1, 3),
            }
        ),
    )
    add(
        "faq_page",
        "content",
        obj(
            {
                "questions": array(
                    obj({"question": string(5, 150), "answer": string(1, 500)}), 1, 6
                ),
            }
        ),
    )
    add(
        "podcast_episode",
        "content",
        obj(
            {
                "title": string(1, 120),
                "episode": integer(1),
                "season": integer(1, 50),
                "duration": {"type": "string", "pattern": "^\\d{1,2}:\\d{2}:\\d{2}$"},
                "explicit": {"type": "boolean"},
                "guests": array(PERSON, 0, 3),
            },
            ["title", "episode", "duration"],
        ),
    )
    add(
        "sentiment_analysis",
        "content",
        obj(
            {
                "label": {"enum": ["positive", "neutral", "negative"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "aspects": array(
                    obj(
                        {
                            "aspect": string(1, 30),
                            "label": {"enum": ["positive", "neutral", "negative"]},
                        }
                    ),
                    0,
                    4,
                ),
            }
        ),
    )
    add(
        "named_entities",
        "content",
        obj(
            {
                "entities": array(
                    obj(
                        {
                            "text": string(1, 60),
                            "type": {"enum": ["PERSON", "ORG", "LOC", "DATE", "MONEY"]},
                            "span": {
                                "type": "array",
                                "prefixItems": [integer(0), integer(0)],
                                "items": False,
                                "minItems": 2,
                            },
                        }
                    ),
                    0,
                    6,
                ),
            }
        ),
    )
    add(
        "summary_with_citations",
        "content",
        obj(
            {
                "summary": string(1, 600),
                "bullets": array(string(1, 120), 1, 5),
                "citations": array(obj({"source": URL, "quote": string(1, 200)}), 0, 3),
            }
        ),
    )
    add(
        "translation",
        "content",
        obj(
            {
                "source_language": {"type": "string", "pattern": "^[a-z]{2}$"},
                "target_language": {"type": "string", "pattern": "^[a-z]{2}$"},
                "text": string(1, 500),
                "alternatives": array(string(1, 500), 0, 2),
            }
        ),
    )
    add(
        "comment_thread",
        "content",
        {
            "$defs": {
                "comment": {
                    "type": "object",
                    "properties": {
                        "author": string(1, 40),
                        "text": string(1, 280),
                        "likes": integer(0),
                        "replies": {
                            "type": "array",
                            "items": {"$ref": "#/$defs/comment"},
                            "maxItems": 2,
                        },
                    },
                    "required": ["author", "text"],
                    "additionalProperties": False,
                }
            },
            "$ref": "#/$defs/comment",
        },
    )
    add(
        "quiz",
        "content",
        obj(
            {
                "topic": string(1, 60),
                "questions": array(
                    obj(
                        {
                            "prompt": string(5, 200),
                            "choices": array(string(1, 80), 2, 5),
                            "answer_index": integer(0, 4),
                            "difficulty": integer(1, 3),
                        }
                    ),
                    1,
                    5,
                ),
            }
        ),
    )
    add(
        "image_caption",
        "content",
        obj(
            {
                "caption": string(5, 200),
                "objects": array(
                    obj(
                        {
                            "label": string(1, 30),
                            "bbox": {
                                "type": "array",
                                "prefixItems": [{"type": "number", "minimum": 0, "maximum": 1}] * 4,
                                "items": False,
                                "minItems": 4,
                            },
                        }
                    ),
                    0,
                    5,
                ),
                "nsfw": {"type": "boolean"},
            }
        ),
    )
    add(
        "rss_item",
        "content",
        obj(
            {
                "title": string(1, 200),
                "link": URL,
                "guid": string(1, 200),
                "pubDate": string(),
                "enclosure": obj({"url": URL, "length": integer(0), "type": string(1, 40)}),
            },
            ["title", "link"],
        ),
    )

    # -- configuration files ----------------------------------------------------------------
    add(
        "package_json",
        "config",
        obj(
            {
                "name": {
                    "type": "string",
                    "pattern": "^(@[a-z0-9-~][a-z0-9-._~]*/)?[a-z0-9-~][a-z0-9-._~]*$",
                    "maxLength": 214,
                },
                "version": SEMVER,
                "description": string(0, 200),
                "private": {"type": "boolean"},
                "scripts": {"type": "object", "additionalProperties": {"type": "string"}},
                "dependencies": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "string",
                        "pattern": "^[~^]?\\d+\\.\\d+\\.\\d+$",
                    },
                },
                "license": string(1, 40),
            },
            ["name", "version"],
        ),
    )
    add(
        "tsconfig",
        "config",
        obj(
            {
                "compilerOptions": obj(
                    {
                        "target": {"enum": ["ES2017", "ES2020", "ES2022", "ESNext"]},
                        "module": {"enum": ["commonjs", "esnext", "nodenext"]},
                        "strict": {"type": "boolean"},
                        "outDir": string(1, 60),
                        "paths": {
                            "type": "object",
                            "additionalProperties": array(string(1, 60), 1, 2),
                        },
                    },
                    [],
                ),
                "include": array(string(1, 60), 0, 4),
                "exclude": array(string(1, 60), 0, 4),
            },
            ["compilerOptions"],
        ),
    )
    add(
        "docker_compose_service",
        "config",
        obj(
            {
                "image": string(1, 100),
                "ports": array(
                    {"type": "string", "pattern": "^\\d{1,5}:\\d{1,5}(/(tcp|udp))?$"}, 0, 4
                ),
                "environment": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
                },
                "volumes": array(string(1, 120), 0, 4),
                "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
                "depends_on": array(K8S_NAME, 0, 3, uniqueItems=True),
                "healthcheck": obj(
                    {
                        "test": array(string(1, 60), 1, 4),
                        "interval": {"type": "string", "pattern": "^\\d+(s|m)$"},
                        "retries": integer(1, 10),
                    },
                    ["test"],
                ),
            },
            ["image"],
        ),
    )
    add(
        "github_actions_job",
        "config",
        obj(
            {
                "runs-on": {"enum": ["ubuntu-latest", "macos-latest", "windows-latest"]},
                "timeout-minutes": integer(1, 360),
                "strategy": obj(
                    {
                        "matrix": obj(
                            {"python": array({"type": "string", "pattern": "^3\\.\\d{1,2}$"}, 1, 4)}
                        ),
                        "fail-fast": {"type": "boolean"},
                    },
                    ["matrix"],
                ),
                "steps": array(
                    {
                        "type": "object",
                        "properties": {
                            "name": string(1, 60),
                            "uses": {"type": "string", "pattern": "^[\\w.-]+/[\\w.-]+@[\\w.-]+$"},
                            "run": string(1, 200),
                        },
                        "anyOf": [{"required": ["uses"]}, {"required": ["run"]}],
                        "additionalProperties": False,
                    },
                    1,
                    6,
                ),
            },
            ["runs-on", "steps"],
        ),
    )
    add(
        "eslint_config",
        "config",
        obj(
            {
                "root": {"type": "boolean"},
                "extends": array(string(1, 60), 0, 4),
                "rules": {
                    "type": "object",
                    "additionalProperties": {
                        "anyOf": [
                            {"enum": ["off", "warn", "error"]},
                            integer(0, 2),
                            {
                                "type": "array",
                                "prefixItems": [{"enum": ["off", "warn", "error"]}],
                                "minItems": 1,
                                "maxItems": 3,
                            },
                        ]
                    },
                },
            },
            ["rules"],
        ),
    )
    add(
        "logging_config",
        "config",
        obj(
            {
                "version": {"const": 1},
                "disable_existing_loggers": {"type": "boolean"},
                "formatters": {
                    "type": "object",
                    "additionalProperties": obj({"format": string(1, 120)}),
                },
                "handlers": {
                    "type": "object",
                    "additionalProperties": obj(
                        {
                            "class": {"type": "string", "pattern": "^[\\w.]+$"},
                            "level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
                        },
                        ["class"],
                    ),
                },
                "root": obj(
                    {
                        "level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
                        "handlers": array(string(1, 30), 0, 3),
                    }
                ),
            },
            ["version"],
        ),
    )
    add(
        "database_config",
        "config",
        obj(
            {
                "host": string(1, 253),
                "port": PORT,
                "database": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]{0,62}$"},
                "user": string(1, 63),
                "ssl_mode": {"enum": ["disable", "require", "verify-ca", "verify-full"]},
                "pool": obj(
                    {
                        "min": integer(0, 100),
                        "max": integer(1, 1000),
                        "idle_timeout_s": {"type": "number", "minimum": 0, "maximum": 86400},
                    }
                ),
            },
            ["host", "port", "database", "user"],
        ),
    )
    add(
        "nginx_server_block",
        "config",
        obj(
            {
                "listen": array(PORT, 1, 2),
                "server_name": array({"type": "string", "pattern": "^[\\w.*-]+$"}, 1, 3),
                "locations": array(
                    obj(
                        {
                            "path": string(1, 60),
                            "proxy_pass": URL,
                            "client_max_body_size": {"type": "string", "pattern": "^\\d+[kmg]?$"},
                        },
                        ["path"],
                    ),
                    1,
                    4,
                ),
                "tls": obj(
                    {
                        "certificate": string(1, 120),
                        "protocols": array({"enum": ["TLSv1.2", "TLSv1.3"]}, 1, 2),
                    }
                ),
            },
            ["listen", "server_name", "locations"],
        ),
    )
    add(
        "feature_flags",
        "config",
        obj(
            {
                "flags": {
                    "type": "object",
                    "additionalProperties": obj(
                        {
                            "enabled": {"type": "boolean"},
                            "rollout_percent": integer(0, 100),
                            "variants": array(
                                obj({"name": string(1, 30), "weight": integer(0, 1000)}), 0, 4
                            ),
                        },
                        ["enabled"],
                    ),
                },
            }
        ),
    )
    add(
        "openapi_info",
        "config",
        obj(
            {
                "openapi": {"type": "string", "pattern": "^3\\.\\d\\.\\d+$"},
                "info": obj(
                    {
                        "title": string(1, 80),
                        "version": string(1, 20),
                        "license": obj({"name": string(1, 40), "url": URL}, ["name"]),
                    },
                    ["title", "version"],
                ),
                "servers": array(obj({"url": URL, "description": string(0, 80)}, ["url"]), 1, 3),
            }
        ),
    )
    add(
        "prometheus_scrape",
        "config",
        obj(
            {
                "job_name": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                "scrape_interval": {"type": "string", "pattern": "^\\d+(ms|s|m|h)$"},
                "metrics_path": {"type": "string", "pattern": "^/"},
                "static_configs": array(
                    obj(
                        {
                            "targets": array(
                                {"type": "string", "pattern": "^[\\w.-]+:\\d+$"}, 1, 4
                            ),
                            "labels": LABELS,
                        },
                        ["targets"],
                    ),
                    1,
                    3,
                ),
            },
            ["job_name", "static_configs"],
        ),
    )
    add(
        "pyproject_subset",
        "config",
        obj(
            {
                "project": obj(
                    {
                        "name": {
                            "type": "string",
                            "pattern": "^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$",
                            "$comment": "case-insensitive in PEP 508",
                        },
                        "version": string(1, 30),
                        "requires-python": string(1, 20),
                        "dependencies": array(string(1, 80), 0, 6),
                    },
                    ["name"],
                ),
            }
        ),
    )
    add(
        "terraform_variable",
        "config",
        obj(
            {
                "name": {"type": "string", "pattern": "^[a-z_][a-z0-9_]*$"},
                "type": {"enum": ["string", "number", "bool", "list(string)", "map(string)"]},
                "default": {"type": ["string", "number", "boolean", "array", "object", "null"]},
                "sensitive": {"type": "boolean"},
                "validation": array(
                    obj({"condition": string(1, 200), "error_message": string(1, 200)}), 0, 2
                ),
            },
            ["name", "type"],
        ),
    )
    add(
        "cron_schedule_config",
        "config",
        obj(
            {
                "jobs": array(
                    obj(
                        {
                            "name": K8S_NAME,
                            "minute": integer(0, 59),
                            "hour": integer(0, 23),
                            "weekday": array(integer(0, 6), 0, 7, uniqueItems=True),
                            "command": string(1, 200),
                        }
                    ),
                    1,
                    5,
                ),
            }
        ),
    )
    add(
        "app_settings_with_refs",
        "config",
        {
            "type": "object",
            "definitions": {
                "endpoint": obj(
                    {
                        "url": URL,
                        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 120},
                    }
                ),
                "credentials": obj(
                    {
                        "user": string(1, 40),
                        "password_env": {"type": "string", "pattern": "^[A-Z_]+$"},
                    }
                ),
            },
            "properties": {
                "primary": {"$ref": "#/definitions/endpoint"},
                "replica": {"$ref": "#/definitions/endpoint"},
                "auth": {"$ref": "#/definitions/credentials"},
            },
            "required": ["primary", "auth"],
            "additionalProperties": False,
        },
    )
    add(
        "editor_settings",
        "config",
        obj(
            {
                "editor.fontSize": integer(6, 72),
                "editor.tabSize": integer(1, 8),
                "editor.wordWrap": {"enum": ["off", "on", "wordWrapColumn", "bounded"]},
                "files.exclude": {"type": "object", "additionalProperties": {"type": "boolean"}},
                "workbench.colorTheme": string(1, 60),
            },
            [],
        ),
    )

    # -- forms, records, domain objects -----------------------------------------------------
    add(
        "invoice",
        "records",
        {
            "type": "object",
            "$defs": {
                "line": obj(
                    {
                        "description": string(1, 100),
                        "quantity": integer(1, 1000),
                        "unit_price": MONEY,
                        "tax_rate": {"type": "number", "minimum": 0, "maximum": 0.5},
                    }
                ),
                "party": obj(
                    {
                        "name": string(1, 80),
                        "vat_id": {"type": "string", "pattern": "^[A-Z]{2}[A-Z0-9]{2,12}$"},
                        "address": ADDRESS,
                    },
                    ["name", "address"],
                ),
            },
            "properties": {
                "number": {"type": "string", "pattern": "^INV-\\d{4}-\\d{5}$"},
                "issued": DATE,
                "due": DATE,
                "seller": {"$ref": "#/$defs/party"},
                "buyer": {"$ref": "#/$defs/party"},
                "lines": array({"$ref": "#/$defs/line"}, 1, 10),
                "currency": CURRENCY,
            },
            "required": ["number", "issued", "seller", "buyer", "lines", "currency"],
            "additionalProperties": False,
        },
    )
    add(
        "shipping_label",
        "records",
        obj(
            {
                "tracking_number": {"type": "string", "pattern": "^[A-Z]{2}\\d{9}[A-Z]{2}$"},
                "carrier": {"enum": ["UPS", "FedEx", "DHL", "USPS", "RoyalMail"]},
                "weight_kg": {"type": "number", "exclusiveMinimum": 0, "maximum": 70},
                "from": ADDRESS,
                "to": ADDRESS,
                "service": {"enum": ["standard", "express", "overnight"]},
            }
        ),
    )
    add(
        "patient_vitals",
        "records",
        obj(
            {
                "patient_id": {"type": "string", "pattern": "^P\\d{7}$"},
                "heart_rate_bpm": integer(20, 250),
                "blood_pressure": {
                    "type": "array",
                    "prefixItems": [integer(50, 250), integer(30, 150)],
                    "items": False,
                    "minItems": 2,
                },
                "temperature_c": {"type": "number", "minimum": 30, "maximum": 45},
                "spo2_percent": integer(50, 100),
                "recorded_at": DATE_TIME,
            }
        ),
    )
    add(
        "employee_record",
        "records",
        obj(
            {
                "employee_id": integer(100000, 999999),
                "name": obj({"given": string(1, 40), "family": string(1, 40)}),
                "email": EMAIL_PATTERN,
                "department": {
                    "enum": ["Engineering", "Sales", "Marketing", "Finance", "HR", "Legal"]
                },
                "salary": obj({"amount": integer(0, 10000000), "currency": CURRENCY}),
                "manager_id": nullable(integer(100000, 999999)),
                "start_date": DATE_PATTERN,
            }
        ),
    )
    add(
        "bank_transfer",
        "records",
        obj(
            {
                "iban": {"type": "string", "pattern": "^[A-Z]{2}\\d{2}[A-Z0-9]{11,30}$"},
                "bic": {"type": "string", "pattern": "^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$"},
                "amount": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": 1000000,
                    "multipleOf": 0.01,
                },
                "currency": CURRENCY,
                "reference": string(0, 140),
            },
            ["iban", "amount", "currency"],
        ),
    )
    add(
        "flight_booking",
        "records",
        obj(
            {
                "pnr": {"type": "string", "pattern": "^[A-Z0-9]{6}$"},
                "passengers": array(
                    obj(
                        {
                            "first_name": string(1, 40),
                            "last_name": string(1, 40),
                            "type": {"enum": ["ADT", "CHD", "INF"]},
                            "seat": {"type": "string", "pattern": "^\\d{1,2}[A-K]$"},
                        },
                        ["first_name", "last_name", "type"],
                    ),
                    1,
                    4,
                ),
                "segments": array(
                    obj(
                        {
                            "from": {"type": "string", "pattern": "^[A-Z]{3}$"},
                            "to": {"type": "string", "pattern": "^[A-Z]{3}$"},
                            "flight": {"type": "string", "pattern": "^[A-Z0-9]{2}\\d{1,4}$"},
                            "departure": DATE_TIME,
                        }
                    ),
                    1,
                    4,
                ),
            }
        ),
    )
    add(
        "restaurant_order",
        "records",
        obj(
            {
                "table": integer(1, 80),
                "items": array(
                    obj(
                        {
                            "dish": string(1, 60),
                            "qty": integer(1, 20),
                            "modifiers": array(
                                {"enum": ["no onions", "extra cheese", "gluten free", "spicy"]},
                                0,
                                3,
                                uniqueItems=True,
                            ),
                        },
                        ["dish", "qty"],
                    ),
                    1,
                    8,
                ),
                "tip_percent": {"type": "number", "minimum": 0, "maximum": 30},
            },
            ["table", "items"],
        ),
    )
    add(
        "contact_card",
        "records",
        obj(
            {
                "fn": string(1, 80),
                "org": string(0, 80),
                "emails": array(obj({"type": {"enum": ["home", "work"]}, "value": EMAIL}), 0, 3),
                "phones": array(
                    obj({"type": {"enum": ["mobile", "home", "work"]}, "value": PHONE}), 0, 3
                ),
                "birthday": DATE,
            },
            ["fn"],
        ),
    )
    add(
        "calendar_event",
        "records",
        obj(
            {
                "summary": string(1, 120),
                "start": DATE_TIME,
                "end": DATE_TIME,
                "all_day": {"type": "boolean"},
                "attendees": array(
                    obj(
                        {
                            "email": EMAIL,
                            "rsvp": {"enum": ["accepted", "declined", "tentative", "needs-action"]},
                        }
                    ),
                    0,
                    5,
                ),
                "recurrence": nullable(
                    {
                        "type": "string",
                        "pattern": "^RRULE:FREQ=(DAILY|WEEKLY|MONTHLY|YEARLY)(;.+)?$",
                    }
                ),
                "reminders_min": array(integer(0, 40320), 0, 3),
            },
            ["summary", "start", "end"],
        ),
    )
    add(
        "medication",
        "records",
        obj(
            {
                "name": string(1, 80),
                "dose_mg": {"type": "number", "exclusiveMinimum": 0, "maximum": 5000},
                "frequency_per_day": integer(1, 6),
                "route": {"enum": ["oral", "iv", "im", "topical", "inhaled"]},
                "prn": {"type": "boolean"},
            }
        ),
    )
    add(
        "real_estate_listing",
        "records",
        obj(
            {
                "listing_id": string(1, 20),
                "price": integer(0, 1000000000),
                "bedrooms": integer(0, 20),
                "bathrooms": {"type": "number", "minimum": 0, "maximum": 20, "multipleOf": 0.5},
                "area_m2": {"type": "number", "exclusiveMinimum": 0, "maximum": 100000},
                "location": obj({"lat": LATITUDE, "lon": LONGITUDE}),
                "features": array(
                    {"enum": ["garage", "garden", "pool", "balcony", "elevator"]},
                    0,
                    5,
                    uniqueItems=True,
                ),
            }
        ),
    )
    add(
        "job_posting",
        "records",
        obj(
            {
                "title": string(1, 100),
                "company": string(1, 80),
                "employment_type": {"enum": ["FULL_TIME", "PART_TIME", "CONTRACTOR", "INTERN"]},
                "remote": {"type": "boolean"},
                "salary_range": {
                    "type": "array",
                    "prefixItems": [integer(0), integer(0)],
                    "items": False,
                    "minItems": 2,
                },
                "skills": array(string(1, 30), 1, 8, uniqueItems=True),
                "valid_through": DATE,
            },
            ["title", "company", "employment_type"],
        ),
    )
    add(
        "vehicle",
        "records",
        obj(
            {
                "vin": {"type": "string", "pattern": "^[A-HJ-NPR-Z0-9]{17}$"},
                "make": string(1, 40),
                "model": string(1, 40),
                "year": integer(1900, 2030),
                "mileage_km": integer(0, 2000000),
                "fuel": {"enum": ["petrol", "diesel", "electric", "hybrid", "lpg"]},
            }
        ),
    )
    add(
        "survey_response",
        "records",
        obj(
            {
                "respondent": UUID,
                "answers": array(
                    {
                        "oneOf": [
                            obj({"question": integer(1, 50), "choice": integer(1, 5)}),
                            obj({"question": integer(1, 50), "text": string(1, 300)}),
                        ]
                    },
                    1,
                    10,
                ),
                "completed": {"type": "boolean"},
            }
        ),
    )
    add(
        "timesheet",
        "records",
        obj(
            {
                "week": {"type": "string", "pattern": "^\\d{4}-W\\d{2}$"},
                "entries": array(
                    obj(
                        {
                            "day": {"enum": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]},
                            "project": string(1, 40),
                            "hours": {
                                "type": "number",
                                "minimum": 0,
                                "maximum": 24,
                                "multipleOf": 0.25,
                            },
                        }
                    ),
                    1,
                    14,
                ),
            }
        ),
    )
    add(
        "grade_report",
        "records",
        obj(
            {
                "student": string(1, 60),
                "term": {"type": "string", "pattern": "^(Fall|Spring|Summer) \\d{4}$"},
                "courses": array(
                    obj(
                        {
                            "code": {"type": "string", "pattern": "^[A-Z]{2,4} ?\\d{3}$"},
                            "grade": {"enum": ["A", "A-", "B+", "B", "B-", "C+", "C", "D", "F"]},
                            "credits": integer(1, 6),
                        }
                    ),
                    1,
                    8,
                ),
                "gpa": {"type": "number", "minimum": 0, "maximum": 4},
            }
        ),
    )

    # -- composition and tool-calling style -------------------------------------------------
    add(
        "shape_oneof",
        "composition",
        {
            "oneOf": [
                obj(
                    {
                        "kind": {"const": "circle"},
                        "radius": {"type": "number", "exclusiveMinimum": 0},
                    }
                ),
                obj(
                    {
                        "kind": {"const": "rectangle"},
                        "width": {"type": "number", "exclusiveMinimum": 0},
                        "height": {"type": "number", "exclusiveMinimum": 0},
                    }
                ),
                obj(
                    {
                        "kind": {"const": "triangle"},
                        "sides": {
                            "type": "array",
                            "prefixItems": [{"type": "number", "exclusiveMinimum": 0}] * 3,
                            "items": False,
                            "minItems": 3,
                        },
                    }
                ),
            ]
        },
    )
    add(
        "payment_method_discriminated",
        "composition",
        obj(
            {
                "method": {
                    "oneOf": [
                        obj(
                            {
                                "type": {"const": "card"},
                                "last4": {"type": "string", "pattern": "^\\d{4}$"},
                                "brand": {"enum": ["visa", "mastercard", "amex"]},
                            }
                        ),
                        obj(
                            {
                                "type": {"const": "sepa"},
                                "iban_last4": {"type": "string", "pattern": "^\\d{4}$"},
                            }
                        ),
                        obj({"type": {"const": "paypal"}, "email": EMAIL}),
                    ]
                },
                "amount": MONEY,
            }
        ),
    )
    add(
        "entity_with_allof_base",
        "composition",
        {
            "$defs": {
                "base": {
                    "type": "object",
                    "properties": {"id": UUID, "created_at": DATE_TIME},
                    "required": ["id", "created_at"],
                },
            },
            "allOf": [
                {"$ref": "#/$defs/base"},
                {
                    "type": "object",
                    "properties": {"name": string(1, 60), "archived": {"type": "boolean"}},
                    "required": ["name"],
                },
            ],
        },
    )
    add(
        "allof_bounds_intersection",
        "composition",
        {
            "type": "object",
            "properties": {
                "score": {"allOf": [integer(0, 100), integer(50, 200)]},
                "label": {"allOf": [string(1, 20), {"type": "string", "pattern": "^[a-z]+$"}]},
            },
            "required": ["score", "label"],
            "additionalProperties": False,
        },
    )
    add(
        "anyof_contact",
        "composition",
        {
            "type": "object",
            "properties": {"email": EMAIL, "phone": PHONE, "name": string(1, 60)},
            "required": ["name"],
            "anyOf": [{"required": ["email"]}, {"required": ["phone"]}],
            "additionalProperties": False,
        },
    )
    add(
        "anyof_value_types",
        "composition",
        obj(
            {
                "key": string(1, 40),
                "value": {
                    "anyOf": [
                        {"type": "string", "maxLength": 50},
                        integer(-1000, 1000),
                        {"type": "boolean"},
                        array(string(1, 10), 0, 3),
                    ]
                },
            }
        ),
    )
    add(
        "oneof_overlapping_numbers",
        "composition",
        obj(
            {
                "n": {
                    "oneOf": [
                        {"type": "integer", "multipleOf": 3},
                        {"type": "integer", "multipleOf": 5},
                    ]
                },
            }
        ),
    )
    add(
        "function_call_weather",
        "tools",
        obj(
            {
                "name": {"const": "get_weather"},
                "arguments": obj(
                    {
                        "location": string(1, 80),
                        "unit": {"enum": ["celsius", "fahrenheit"]},
                        "days": integer(1, 14),
                    },
                    ["location"],
                ),
            }
        ),
    )
    add(
        "function_call_choice",
        "tools",
        {
            "anyOf": [
                obj(
                    {
                        "name": {"const": "search_web"},
                        "arguments": obj(
                            {"query": string(1, 100), "max_results": integer(1, 10)}, ["query"]
                        ),
                    }
                ),
                obj(
                    {
                        "name": {"const": "send_email"},
                        "arguments": obj(
                            {
                                "to": array(EMAIL, 1, 5),
                                "subject": string(1, 100),
                                "body": string(1, 1000),
                            }
                        ),
                    }
                ),
                obj(
                    {
                        "name": {"const": "create_event"},
                        "arguments": obj(
                            {
                                "title": string(1, 80),
                                "start": DATE_TIME,
                                "minutes": integer(5, 480, multipleOf=5),
                            }
                        ),
                    }
                ),
            ]
        },
    )
    add(
        "classification_with_reasoning",
        "tools",
        obj(
            {
                "reasoning": string(1, 400),
                "category": {"enum": ["billing", "technical", "account", "sales", "other"]},
                "urgency": integer(1, 5),
                "needs_human": {"type": "boolean"},
            }
        ),
    )
    add(
        "extraction_invoice_fields",
        "tools",
        obj(
            {
                "vendor": nullable(string(1, 80)),
                "invoice_number": nullable(string(1, 40)),
                "total": nullable({"type": "number", "minimum": 0}),
                "date": nullable(DATE_PATTERN),
                "line_items": array(
                    obj({"description": string(1, 80), "amount": {"type": "number"}}), 0, 10
                ),
            }
        ),
    )
    add(
        "sql_query_plan",
        "tools",
        obj(
            {
                "tables": array({"type": "string", "pattern": "^\\w+$"}, 1, 4),
                "columns": array({"type": "string", "pattern": "^\\w+(\\.\\w+)?$"}, 1, 8),
                "where": array(
                    obj(
                        {
                            "column": string(1, 40),
                            "op": {"enum": ["=", "!=", "<", ">", "<=", ">=", "LIKE", "IN"]},
                            "value": {"type": ["string", "number", "boolean"]},
                        }
                    ),
                    0,
                    4,
                ),
                "limit": integer(1, 1000),
            },
            ["tables", "columns"],
        ),
    )
    add(
        "tree_node_recursive",
        "composition",
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {
                        "value": integer(-100, 100),
                        "children": {
                            "type": "array",
                            "items": {"$ref": "#/$defs/node"},
                            "maxItems": 2,
                        },
                    },
                    "required": ["value"],
                    "additionalProperties": False,
                }
            },
            "$ref": "#/$defs/node",
        },
    )
    add(
        "json_patch",
        "composition",
        array(
            {
                "oneOf": [
                    obj(
                        {
                            "op": {"enum": ["add", "replace", "test"]},
                            "path": {"type": "string", "pattern": "^(/[^/]*)*$"},
                            "value": {},
                        }
                    ),
                    obj(
                        {
                            "op": {"const": "remove"},
                            "path": {"type": "string", "pattern": "^(/[^/]*)*$"},
                        }
                    ),
                    obj(
                        {
                            "op": {"enum": ["move", "copy"]},
                            "from": {"type": "string", "pattern": "^(/[^/]*)*$"},
                            "path": {"type": "string", "pattern": "^(/[^/]*)*$"},
                        }
                    ),
                ]
            },
            1,
            4,
        ),
    )
    add(
        "geojson_point_or_line",
        "composition",
        {
            "oneOf": [
                obj(
                    {
                        "type": {"const": "Point"},
                        "coordinates": {
                            "type": "array",
                            "prefixItems": [LONGITUDE, LATITUDE],
                            "items": False,
                            "minItems": 2,
                        },
                    }
                ),
                obj(
                    {
                        "type": {"const": "LineString"},
                        "coordinates": array(
                            {
                                "type": "array",
                                "prefixItems": [LONGITUDE, LATITUDE],
                                "items": False,
                                "minItems": 2,
                            },
                            2,
                            5,
                        ),
                    }
                ),
            ]
        },
    )
    add(
        "matrix_3x3",
        "arrays",
        obj(
            {
                "matrix": array(array({"type": "number", "minimum": -1, "maximum": 1}, 3, 3), 3, 3),
            }
        ),
    )
    add(
        "nested_arrays_ragged",
        "arrays",
        obj(
            {
                "groups": array(array(array(integer(0, 9), 0, 3), 0, 3), 1, 3),
            }
        ),
    )
    add(
        "tuple_rgb_named",
        "arrays",
        obj(
            {
                "name": string(1, 30),
                "rgb": {
                    "type": "array",
                    "prefixItems": [integer(0, 255)] * 3,
                    "items": False,
                    "minItems": 3,
                },
                "alpha": {"type": "number", "minimum": 0, "maximum": 1},
            }
        ),
    )
    add(
        "tuple_with_rest",
        "arrays",
        obj(
            {
                "row": {
                    "type": "array",
                    "prefixItems": [{"type": "string", "maxLength": 10}, integer(0)],
                    "items": {"type": "boolean"},
                    "minItems": 2,
                    "maxItems": 5,
                },
            }
        ),
    )
    add(
        "unique_enum_set",
        "arrays",
        obj(
            {
                "permissions": array(
                    {"enum": ["read", "write", "delete", "admin"]}, 1, 4, uniqueItems=True
                ),
            }
        ),
    )
    add(
        "contains_constraint",
        "arrays",
        obj(
            {
                "steps": {
                    "type": "array",
                    "items": string(1, 20),
                    "contains": {"const": "deploy"},
                    "maxItems": 5,
                },
            }
        ),
    )
    add("top_level_enum", "simple", {"enum": ["yes", "no", "maybe"]})
    add("top_level_integer_range", "simple", integer(1, 10))
    add("top_level_string_pattern", "simple", {"type": "string", "pattern": "^[A-Z]{3}-\\d{3}$"})
    add(
        "top_level_array_of_numbers",
        "simple",
        array({"type": "number", "minimum": 0, "exclusiveMaximum": 1}, 1, 5),
    )
    add(
        "boolean_answer",
        "simple",
        obj({"answer": {"type": "boolean"}, "confidence": integer(0, 100)}),
    )
    add(
        "number_exclusive_bounds",
        "simple",
        obj(
            {
                "probability": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "temperature_k": {"type": "number", "exclusiveMinimum": 0},
                "offset": {"type": "integer", "exclusiveMinimum": -10, "exclusiveMaximum": 10},
            }
        ),
    )
    add(
        "multiple_of_integers",
        "simple",
        obj(
            {
                "minutes": integer(0, 1440, multipleOf=15),
                "bytes": integer(0, 1048576, multipleOf=512),
            }
        ),
    )
    add(
        "pattern_unanchored",
        "simple",
        obj(
            {
                "code": {"type": "string", "pattern": "\\d{3}"},
                "word": {"type": "string", "pattern": "\\w+", "maxLength": 20},
            }
        ),
    )
    add(
        "string_formats",
        "simple",
        obj(
            {
                "when": DATE_TIME,
                "day": DATE,
                "time": {"type": "string", "format": "time"},
                "id": UUID_FORMAT,
                "mail": EMAIL,
                "site": URL,
                "addr": {"type": "string", "format": "ipv4"},
                "addr6": {"type": "string", "format": "ipv6"},
                "host": {"type": "string", "format": "hostname"},
            }
        ),
    )
    add(
        "open_object",
        "simple",
        {"type": "object", "properties": {"id": integer(1)}, "required": ["id"]},
    )
    add(
        "dependent_required",
        "simple",
        {
            "type": "object",
            "properties": {
                "credit_card": string(12, 19),
                "billing_address": string(1, 120),
                "name": string(1, 40),
            },
            "required": ["name"],
            "dependentRequired": {"credit_card": ["billing_address"]},
            "additionalProperties": False,
        },
    )
    add(
        "not_keyword",
        "simple",
        obj({"username": {"type": "string", "maxLength": 20, "not": {"enum": ["admin", "root"]}}}),
    )
    add(
        "const_and_enum_mix",
        "simple",
        obj(
            {
                "schema_version": {"const": 2},
                "mode": {"enum": ["fast", "slow", None]},
                "ratio": {"enum": [0.25, 0.5, 1]},
            }
        ),
    )
    add(
        "pydantic_style_model",
        "simple",
        {
            "$defs": {
                "Status": {"enum": ["todo", "doing", "done"], "title": "Status", "type": "string"},
                "SubTask": {
                    "properties": {
                        "title": {"maxLength": 60, "title": "Title", "type": "string"},
                        "done": {"default": False, "title": "Done", "type": "boolean"},
                    },
                    "required": ["title"],
                    "title": "SubTask",
                    "type": "object",
                },
            },
            "properties": {
                "title": {"maxLength": 80, "minLength": 1, "title": "Title", "type": "string"},
                "status": {"$ref": "#/$defs/Status"},
                "estimate_hours": {
                    "anyOf": [{"maximum": 100, "minimum": 0, "type": "number"}, {"type": "null"}],
                    "default": None,
                    "title": "Estimate Hours",
                },
                "subtasks": {
                    "items": {"$ref": "#/$defs/SubTask"},
                    "maxItems": 5,
                    "title": "Subtasks",
                    "type": "array",
                },
            },
            "required": ["title", "status", "subtasks"],
            "type": "object",
        },
    )
    return items


def main(argv: list[str] | None = None) -> None:
    """Write the corpus as JSON lines."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    entries = corpus()
    names = [name for name, _, _ in entries]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise SystemExit(f"duplicate schema names: {sorted(duplicates)}")
    with out.open("w", encoding="utf-8") as stream:
        for name, domain, schema in entries:
            line = {"name": name, "domain": domain, "schema": schema}
            stream.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"{len(entries)} schemas -> {out}")


if __name__ == "__main__":
    main()
