"""A botocore-free, signed GET of one small S3 object: the cached bootstrap's fast path.

A cached start needs one thing from S3, the published manifest (a few KiB). Importing boto3 and
building a client costs 0.4-0.6 s (botocore parses a multi-MiB service model), which alone would
blow the 0.5 s budget of a cached start. This module signs a single GET with AWS Signature V4
using only the standard library, and is used only where its answer cannot differ from boto3's:
credentials in the environment (boto3's first provider) and either an explicit
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (path-style) or plain AWS with AWS_REGION set and no
endpoint override in the config file. Anything else, and any answer but 200, returns None, and
the caller asks boto3, which applies the full credential chain, retries and redirects.
"""
from __future__ import annotations

import hmac
import http.client
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

from ..artifacts.digest import sha256_bytes

TIMEOUT_S = 5.0
_EMPTY_SHA = sha256_bytes(b"")


def _endpoint(env: Mapping[str, str], bucket: str, key: str) -> tuple[str, str, str] | None:
    """(scheme, host[:port], path) to GET, or None when only boto3 can tell where S3 is."""
    custom = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        custom = None
    if custom:
        parts = urlsplit(custom)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return None
        base = parts.path.rstrip("/")
        return parts.scheme, parts.netloc, f"{base}/{bucket}/{key}"
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not region or "." in bucket or _config_sets_endpoint(env):
        return None
    return "https", f"{bucket}.s3.{region}.amazonaws.com", f"/{key}"


def _config_sets_endpoint(env: Mapping[str, str]) -> bool:
    """Could the shared config file redirect S3 (endpoint_url, services, S3 options)?"""
    path = Path(env.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config").expanduser()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return any(word in text for word in ("endpoint_url", "services", "s3 =", "s3="))


def _sign(method: str, host: str, path: str, region: str, env: Mapping[str, str],
          now: datetime, extra: Mapping[str, str] | None = None,
          query: str = "") -> dict[str, str]:
    """SigV4 headers for a body-less request (see the AWS "Signature Version 4" reference);
    `query` is the canonical query string (sorted, each name and value URI-encoded)."""
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {"host": host, "x-amz-content-sha256": _EMPTY_SHA, "x-amz-date": amz_date,
               **{k.lower(): v for k, v in (extra or {}).items()}}
    token = env.get("AWS_SESSION_TOKEN")
    if token:
        headers["x-amz-security-token"] = token
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, quote(path, safe="/~"), query,
                           "".join(f"{k}:{headers[k].strip()}\n" for k in sorted(headers)),
                           signed, _EMPTY_SHA])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, sha256_bytes(canonical.encode())])
    key = ("AWS4" + env["AWS_SECRET_ACCESS_KEY"]).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), "sha256").digest()
    signature = hmac.new(key, to_sign.encode(), "sha256").hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={env['AWS_ACCESS_KEY_ID']}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    return headers


def get_small(bucket: str, key: str, *, limit: int,
              env: Mapping[str, str] | None = None) -> bytes | None:
    """The object's bytes if this fast path applies and S3 answers 200; None means "ask boto3"."""
    env = os.environ if env is None else env
    if not (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")):
        return None
    where = _endpoint(env, bucket, key)
    if where is None:
        return None
    scheme, host, path = where
    return _get(scheme, host, path, "", env, limit)


def _get(scheme: str, host: str, path: str, query: str, env: Mapping[str, str],
         limit: int, unsized: bool = False) -> bytes | None:
    """One signed GET; the body when S3 answers 200 with at most `limit` bytes, else None.
    `unsized`: also take a body sent without Content-Length (chunked, as listings may be)."""
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    headers = _sign("GET", host, path, region, env, datetime.now(UTC), query=query)
    conn_cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(host, timeout=TIMEOUT_S)
    target = quote(path, safe="/~") + (f"?{query}" if query else "")
    try:
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        length = int(response.getheader("Content-Length") or -1)
        if unsized and length < 0 and response.status == 200:
            data = response.read(limit + 1)  # http.client refuses a cut-off chunked body
            return data if len(data) <= limit else None
        if response.status != 200 or not 0 <= length <= limit:
            return None
        data = response.read()
        return data if len(data) == length else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def _query(params: Mapping[str, str]) -> str:
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                    for k, v in sorted(params.items()))


def list_keys(bucket: str, prefix: str, *, page: int = 1000, max_pages: int = 10_000,
              env: Mapping[str, str] | None = None) -> list[str] | None:
    """Every key under `prefix` (ListObjectsV2, following continuation tokens) if this fast path
    applies and S3 answers 200 to every page; None means "ask boto3". A listing of the cache's
    engine index happens on every no-op check of a TensorRT bundle: without this, that check
    would import boto3."""
    from xml.etree import ElementTree

    env = os.environ if env is None else env
    if not (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")):
        return None
    where = _endpoint(env, bucket, "")
    if where is None:
        return None
    scheme, host, path = where
    path = path.rstrip("/") or "/"  # path-style: /<bucket>; virtual-hosted: /
    keys: list[str] = []
    params = {"list-type": "2", "max-keys": str(page), "prefix": prefix}
    for _ in range(max_pages):
        body = _get(scheme, host, path, _query(params), env, 64 << 20, unsized=True)
        try:
            root = ElementTree.fromstring(body) if body is not None else None
        except ElementTree.ParseError:
            root = None
        if root is None:
            return None
        ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        keys.extend(c.findtext(f"{ns}Key") or "" for c in root.iter(f"{ns}Contents"))
        token = root.findtext(f"{ns}NextContinuationToken")
        if root.findtext(f"{ns}IsTruncated") != "true":
            return keys
        if not token:
            return None
        params["continuation-token"] = token
    return None
