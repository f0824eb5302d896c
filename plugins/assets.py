"""Spellbook's stylesheet and script on every page (served from plugins/static)."""
from datasette import hookimpl


@hookimpl
def extra_css_urls():
    return ["/spellbook-static/spellbook.css"]


@hookimpl
def extra_js_urls():
    return [{"url": "/spellbook-static/spellbook.js", "module": False}]
