"""Spellbook's Datasette pages: one concern per module, each registered through the `datasette`
entry point (pyproject.toml), so any Datasette with Spellbook installed shows them.

This package is itself registered too: Datasette serves its `static/` folder at
/-/static-plugins/spellbook/, and these two hooks put the stylesheet and script on every page.
To add a page: a module here with its `register_routes`, a template in templates/, and an entry
point line in pyproject.toml.
"""
from datasette import hookimpl


@hookimpl
def extra_css_urls(datasette):
    return [datasette.urls.static_plugins("spellbook", "spellbook.css")]


@hookimpl
def extra_js_urls(datasette):
    return [{"url": datasette.urls.static_plugins("spellbook", "spellbook.js"), "module": False}]
