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

# the oldest supported release line of each framework (the extras' lower bounds), at its
# latest patch release (the one people run: 4.2.0 itself predates fixes its line received)
OLDEST = [
    "starlette~=0.40.0",
    "fastapi~=0.115.3",  # 0.115.3: the first FastAPI release that accepts Starlette 0.40
    "Django~=4.2.0",
    "Flask~=3.0.0",
    "djangorestframework~=3.15.0",  # tests only: the last line that supports Django 4.2
]
# warnings that today's dependencies raise inside the oldest frameworks (the suite turns
# warnings into errors); they are the frameworks' to fix, not ours
OLDEST_WARNINGS = [
    "ignore:The anyio.abc.BlockingPortal alias is deprecated:DeprecationWarning",  # starlette<0.41
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
    options: list[str] = []
    if frameworks == "oldest":
        session.install("--upgrade", *OLDEST)
        options = [f"-W{spec}" for spec in OLDEST_WARNINGS]
    else:
        session.install("--upgrade", *NEWEST)
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    session.run("pytest", "-m", "not slow", *options, *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The docs site, as ``make docs``: a broken link or reference fails."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
