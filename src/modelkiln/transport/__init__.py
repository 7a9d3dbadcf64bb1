"""Moving bytes to and from s3:// and file:// locations: one retry policy, one progress callback.

Publishing, the runtime bootstrap and (later) the remote cache and the OCI push all go through
here, so every transfer retries, checks and reports progress the same way.
"""
from __future__ import annotations

from .fetch import Progress, download, read_small
from .s3 import (DEFAULT, TransferSettings, error_code, is_permanent, s3_client, status_of,
                 transfer_config, with_retries)
from .uris import local_path, parse_s3, scheme_of, sibling

__all__ = ["DEFAULT", "Progress", "TransferSettings", "download", "error_code", "is_permanent",
           "local_path", "parse_s3", "read_small", "s3_client", "scheme_of", "sibling",
           "status_of", "transfer_config", "with_retries"]
