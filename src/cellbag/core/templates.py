"""Pages from templates: Jinja2 with autoescape on, templates and static CSS/JS shipped as
package data (``<package>/templates/``, ``<package>/static/``).

The report and the neighbour pages use it; both stay offline and single-file: a page's CSS
and JavaScript are inlined from the package's static files, so an ``index.html`` (or a
``neighbors --html`` page) opens anywhere without a server or a network.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any


@cache
def environment(package: str) -> Any:
    """The Jinja2 environment of ``package``'s ``templates/`` folder: every value escaped
    unless marked safe, an undefined name an error, ``asset(name)`` inlining a static file."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader(package, "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["asset"] = lambda name: static_text(package, name)
    return env


def static_text(package: str, name: str) -> Any:
    """A static file of ``package`` (CSS or JS shipped with cellbag, trusted) as markup."""
    from markupsafe import Markup

    return Markup(resources.files(package).joinpath("static", name).read_text("utf-8"))


def render(package: str, template: str, **context: Any) -> str:
    """``template`` of ``package`` rendered with ``context``."""
    return environment(package).get_template(template).render(**context)
