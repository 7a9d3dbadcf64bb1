"""Moving bytes to and from s3:// and file:// locations: one retry policy, one progress callback.

Publishing, the runtime bootstrap, the remote cache and the OCI push all go through here, so
every transfer retries, checks and reports progress the same way. `open_location` gives the
`Location` (objects.py) for an s3:// prefix (`Bucket`), a directory (`LocalDir`) or a plug-in
scheme: the conditional writes, HEADs, checked reads and listings a protocol is written against
once. Which module serves which scheme is decided in one place, `schemes` (entry-point group
`modelkiln.transports`).
"""
from __future__ import annotations

from typing import Any

from .bucket import Bucket
from .fetch import (
    BadObject,
    DigestMismatch,
    Missing,
    Progress,
    TooLarge,
    Unusable,
    download,
    read_small,
)
from .local import LocalDir
from .objects import (
    ALWAYS,
    IF_ABSENT,
    Condition,
    Location,
    ObjectInfo,
    PreconditionFailed,
    ensure,
    if_match,
)
from .s3 import (
    DEFAULT,
    TransferSettings,
    error_code,
    is_permanent,
    s3_client,
    status_of,
    transfer_config,
    with_retries,
)
from .uris import local_path, parse_s3, scheme_of, sibling

__all__ = ["ALWAYS", "DEFAULT", "IF_ABSENT", "BadObject", "Bucket", "Condition", "DigestMismatch",
           "LocalDir", "Location", "Missing", "ObjectInfo", "PreconditionFailed", "Progress",
           "TooLarge", "TransferSettings", "Unusable", "download", "ensure",
           "error_code", "if_match", "is_permanent", "local_path", "open_location", "parse_s3",
           "read_small", "s3_client", "scheme_of", "sibling", "status_of", "transfer_config",
           "with_retries"]


def open_location(uri: str, settings: TransferSettings = DEFAULT, client: Any = None) -> Location:
    """The Location an s3://bucket/prefix/, file:///path/, plain directory path or a plug-in
    transport's URI names (transport.schemes: the one registry of schemes).

    boto3 is imported (and a client made) only for s3://, and only when no `client` is given.
    """
    from .schemes import open_location as by_scheme

    return by_scheme(uri, settings, client)
