"""nox sessions.

    nox                      # the default session: the whole test suite (what CI runs)
    nox -s matrix            # Python 3.11-3.13 x the oldest and newest supported frameworks
    nox -s "matrix-3.12(oldest)"  # one cell
    nox -s docs              # mkdocs build --strict

Interpreters that are not installed are skipped (``--error-on-missing-interpreters`` to fail
instead). The oldest releases below are the floors of the extras in ``pyproject.toml``: keep
the two in step.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.11", "3.12", "3.13"]

# the oldest supported release of each framework (the extras' lower bounds)
OLDEST = [
    "starlette==0.40.0",
    "fastapi==0.115.3",  # the first FastAPI release that accepts Starlette 0.40
    "Django==4.2",
    "Flask==3.0.0",
]
NEWEST = ["starlette", "fastapi", "Django", "Flask"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite with the current releases (``nox -- -k flask`` passes options)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHONS)
@nox.parametrize("frameworks", ["oldest", "newest"], ids=["oldest", "newest"])
def matrix(session: nox.Session, frameworks: str) -> None:
    """The suite (without the slow end-to-end scenarios) against the oldest or the newest
    release of every supported framework."""
    session.install("-e", ".[dev]")
    if frameworks == "oldest":
        session.install(*OLDEST)
    else:
        session.install("--upgrade", *NEWEST)
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    session.run("pytest", "-m", "not slow", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The docs site, as ``make docs``: a broken link or reference fails."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
