"""Jinja filters for Spellbook's templates."""
from datasette import hookimpl

from spellbook.text.markup import safe_url


@hookimpl
def prepare_jinja2_environment(env):
    env.filters["safe_url"] = safe_url
