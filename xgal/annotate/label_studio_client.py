"""The connection to Label Studio, and what is checked before the token is sent anywhere.

The token (a Personal Access Token: Label Studio's Account & Settings) is read from a file, so
that it never appears in a shell history or a process list; like ssh with a private key, xgal
refuses a token file that its group or others may read (`chmod 600 FILE`). The token never goes
over plain http to another machine: `http://` is for a Label Studio on this one (localhost,
127.0.0.0/8, ::1); anything else takes `https://`, or `allow_http` (`--allow-http`) for a
network the user trusts. Both checks run before any connection is made.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from xgal.core.errors import InvalidArgument, UserError

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio


def check_url(url: str, allow_http: bool = False) -> str:
    """`url` without a trailing slash, once it is an http(s) address and, when plain http, one
    of this machine (or `allow_http`)."""
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # a port that is not a number raises
    except ValueError as e:
        raise InvalidArgument(f"--url {url!r} is not an address ({e})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidArgument(
            f"--url {url!r}: give Label Studio's address as http://host:port or https://host"
        )
    if parts.scheme == "http" and not allow_http and not is_loopback(host):
        raise InvalidArgument(
            f"--url {url}: refusing to send the Label Studio token over plain http to {host}, which is "
            "not this machine; use https://, or --allow-http if the network in between is trusted"
        )
    return url.rstrip("/")


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine without asking a resolver: localhost, 127.0.0.0/8, ::1."""
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: it could resolve anywhere
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


def read_token(token_file: str | Path) -> str:
    """The token in `token_file`, which must be readable by its owner only (as ssh requires of a
    private key) and not empty."""
    path = Path(token_file)
    if not path.is_file():
        raise FileNotFoundError(f"token file not found: {path}")
    mode = stat.S_IMODE(path.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        raise InvalidArgument(
            f"permissions {mode:04o} for the token file {path} are too open: others may read the "
            f"Label Studio token; make it yours only: chmod 600 {path}"
        )
    token = path.read_text().strip()
    if not token:
        raise InvalidArgument(f"{path} is empty: put a Label Studio Personal Access Token in it")
    return token


def connect(url: str, token_file: str | Path, *, allow_http: bool = False) -> LabelStudio:
    """A client for the Label Studio at `url`, checked: the address and token file first (no
    connection before), then reachable and the token accepted."""
    url = check_url(url, allow_http)
    token = read_token(token_file)
    try:
        import httpx
        from label_studio_sdk import LabelStudio
        from label_studio_sdk.core.api_error import ApiError
    except ImportError:
        raise UserError("xgal label-studio needs label-studio-sdk: pip install 'xgal[annotate]'") from None

    try:
        # A Personal Access Token is exchanged for an access token as the client is made. The
        # client ignores the environment's proxies (HTTP_PROXY would carry the token in clear text,
        # even to 127.0.0.1) and follows no redirect (one could take the token elsewhere, or to
        # http); the trailing slash keeps a path prefix (https://host/ls/) in the token's refresh URL.
        http = httpx.Client(trust_env=False, follow_redirects=False, timeout=120)
        client = LabelStudio(base_url=url + "/", api_key=token, timeout=120, httpx_client=http)
        client.users.whoami()
    except httpx.HTTPError as e:
        raise InvalidArgument(f"cannot reach Label Studio at {url}: {e}") from None
    except ApiError as e:
        if e.status_code in (401, 403):
            raise InvalidArgument(
                f"Label Studio at {url} refused the token in {token_file} ({e.status_code}): give a "
                "Personal Access Token (Account & Settings > Personal Access Token)"
            ) from None
        raise InvalidArgument(f"Label Studio at {url} answered {e.status_code}: {e.body}") from None
    return client
