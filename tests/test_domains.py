import pyarrow as pa

from spellbook.ingest.domains import hosts, registered_domain, registered_domains


def test_registered_domain_uses_the_public_suffix_list():
    assert registered_domain("i.pinimg.com") == registered_domain("pinimg.com") == "pinimg.com"
    assert registered_domain("foo.blogspot.com") == "foo.blogspot.com"
    assert registered_domain("www.bbc.co.uk") == "bbc.co.uk"
    assert registered_domain("I.PINIMG.COM.") == "pinimg.com"
    assert registered_domain("192.168.0.1") == "192.168.0.1"
    assert registered_domain("") is None and registered_domain(None) is None


def test_hosts_and_domains_vectorised():
    urls = pa.array(["https://user:pw@I.Pinimg.com:8080/a.jpg?x=1", "http://[::1]/x", "javascript:alert(1)", None, "https://foo.blogspot.com"])
    assert hosts(urls).to_pylist() == ["i.pinimg.com", "[::1]", None, None, "foo.blogspot.com"]
    assert registered_domains(urls).to_pylist() == ["pinimg.com", "[::1]", None, None, "foo.blogspot.com"]
