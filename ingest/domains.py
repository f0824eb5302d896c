"""Registered domains (eTLD+1) for image URLs, from the Public Suffix List bundled with
publicsuffixlist, so it works offline: i.pinimg.com and pinimg.com are one domain, while
foo.blogspot.com is its own (blogspot.com is a private suffix).

Hosts repeat heavily in LAION (a few CDNs hold most images), so the list is consulted once per
distinct host and the rest is vectorised in Arrow.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc

# scheme://[userinfo@]host[:port]...; IPv6 hosts keep their brackets.
_HOST_PATTERN = r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]/]*\]|[^:/?#]*)"


@lru_cache(maxsize=1)
def _public_suffix_list():
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


@lru_cache(maxsize=1_000_000)
def registered_domain(host: str | None) -> str | None:
    """'i.pinimg.com' -> 'pinimg.com'; IP addresses stay whole; None where there is no host."""
    if not host:
        return None
    host = host.strip(".").lower()
    if host.startswith("["):
        return host
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    return _public_suffix_list().privatesuffix(host) or host


def hosts(urls: pa.Array) -> pa.Array:
    """The lower-cased host of each URL (null where the URL has none)."""
    matched = pc.extract_regex(urls, _HOST_PATTERN)
    return pc.utf8_lower(pc.struct_field(matched, "host"))


def registered_domains(urls: pa.Array) -> pa.DictionaryArray:
    """Registered domain of every URL, as a dictionary array (indices into distinct domains)."""
    encoded = pc.dictionary_encode(hosts(urls))
    domains = pa.array([registered_domain(host) for host in encoded.dictionary.to_pylist()], pa.string())
    return pa.DictionaryArray.from_arrays(encoded.indices, domains)
