"""What a template may import from its environment: Dagster and what Dagster requires.

Imported by ``template.py`` (run with ``-S``: no site, so no ``.pth`` file ran) in a file's
environment, so it uses the standard library only. A template is shared by locations that run
as different users, so no location's code may run in it: not the file's own packages, and
not a package that puts files where Dagster's do. :func:`install` computes the files of
the distributions Dagster requires, transitively (as installed, from their metadata),
leaves out every file another distribution also installs, and refuses to import any module
of the environment's ``site-packages`` that is not one of them. A module of the standard
library or of the runner's boot folder imports as usual.
"""

import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import re
import sys

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normal(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(root, distributions):
    """Names of ``root`` and every distribution it requires, transitively, that is
    installed (``distributions``: normalized name -> distribution); extras are left out."""
    seen, todo = set(), [_normal(root)]
    while todo:
        name = todo.pop()
        if name in seen or name not in distributions:
            continue
        seen.add(name)
        for requirement in distributions[name].requires or ():
            marker = requirement.partition(";")[2]
            match = _NAME.match(requirement)
            if match and "extra" not in marker:
                todo.append(_normal(match.group(1)))
    return seen


def _files(dist, base):
    out = set()
    for entry in dist.files or ():
        out.add(os.path.normpath(os.path.join(base, str(entry))))
    return out


class Guard(importlib.abc.MetaPathFinder):
    """Refuses modules of ``site_dirs`` whose file is not in ``allowed``, or whose bytecode
    another distribution installed (``others``)."""

    def __init__(self, allowed, site_dirs, others=frozenset()):
        self.allowed = allowed
        self.others = others
        self.site_dirs = tuple(os.path.join(d, "") for d in site_dirs)
        self.refused = []

    def find_spec(self, name, path, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or not spec.has_location or not spec.origin:
            return None  # built in, frozen, a namespace package, or not found: as usual
        origin = os.path.normpath(spec.origin)
        cached = os.path.normpath(spec.cached) if spec.cached else None
        if not origin.startswith(self.site_dirs) or (
            origin in self.allowed and cached not in self.others
        ):
            return spec
        self.refused.append(name)
        raise ImportError(
            f"{name} is not Dagster's nor required by it: a template does not import it ({origin})",
            name=name,
        )


def install(site_dirs):
    """Put the guard in front of the import system; return it (remove it from
    ``sys.meta_path`` to lift it)."""
    distributions = {}
    bases = {}
    for dist in importlib.metadata.distributions(path=list(site_dirs)):
        name = _normal(dist.metadata["Name"] or "")
        if name and name not in distributions:
            distributions[name] = dist
            bases[name] = str(dist.locate_file(""))
    dagster = requirement_closure("dagster", distributions)
    allowed, others = set(), set()
    for name, dist in distributions.items():
        (allowed if name in dagster else others).update(_files(dist, bases[name]))
    guard = Guard(frozenset(allowed - others), site_dirs, frozenset(others))
    sys.meta_path.insert(0, guard)
    return guard
