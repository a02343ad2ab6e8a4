"""``.runnerignore``: files in the code folder that are not locations, gitignore-style.

Like ``.gitignore`` (or ``.airflowignore``, ``.dockerignore``): one per folder, its patterns
relative to that folder, deeper files refining what outer ones say, ``!`` re-including. A
utility script with a PEP 723 block (a CLI, a one-off job) is left alone instead of becoming
a red location. Each file is re-read when its size or mtime changes.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

import pathspec

IGNORE_NAME = ".runnerignore"


@dataclass(frozen=True)
class FolderRules:
    folder: str  # relative to the code folder ("" for the top)
    spec: pathspec.GitIgnoreSpec
    lines: tuple[str, ...]  # the file's lines, to say which one matched


Rules = tuple[FolderRules, ...]


def ids(rules: Rules) -> tuple[int, ...]:
    """Identifies a set of rules: a folder's parsed file is replaced when it changes."""
    return tuple(id(rule) for rule in rules)


def why_ignored(rules: Rules, relpath: str, *, is_dir: bool) -> str | None:
    """Which ignore file and line leave ``relpath`` out, or ``None`` if none does."""
    verdict: str | None = None
    for rule in rules:  # outer first: a deeper file has the last word
        below = relpath[len(rule.folder) + 1 :] if rule.folder else relpath
        result = rule.spec.check_file(below + "/" if is_dir else below)
        if result.include is None:
            continue
        if result.include:
            line = _line_of(rule, result.index)
            where = posixpath.join(rule.folder, IGNORE_NAME)
            verdict = f"{where} line {line[0]}: {line[1]}"
        else:
            verdict = None  # re-included by a "!" pattern
    return verdict


def _line_of(rule: FolderRules, index: int | None) -> tuple[int, str]:
    """The line number and text of pattern ``index`` (one pattern per line, see ``rules``)."""
    if index is None or not 0 <= index < len(rule.lines):
        return 0, "?"
    return index + 1, rule.lines[index].strip()


class IgnoreFiles:
    """The parsed ignore file of each folder, kept until it changes, and each path's verdict,
    kept while the rules that apply to it stay the same (matching every file of a large
    share against its patterns at every rescan would double the rescan's cost)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, tuple[tuple[int, int], FolderRules]] = {}
        self._verdicts: dict[str, tuple[tuple[int, ...], str | None]] = {}
        self._previous: dict[str, tuple[tuple[int, ...], str | None]] = {}

    def begin_scan(self) -> None:
        """Verdicts carry over only for paths the next scan sees again."""
        self._previous, self._verdicts = self._verdicts, {}

    def why(self, rules: Rules, relpath: str, *, is_dir: bool, key: tuple[int, ...]) -> str | None:
        """:func:`why_ignored`, remembered per path while ``key`` (``ids(rules)``, computed
        once per folder) stays the same."""
        if not rules:
            return None
        known = self._previous.get(relpath)
        verdict = (
            known[1]
            if known is not None and known[0] == key
            else why_ignored(rules, relpath, is_dir=is_dir)
        )
        self._verdicts[relpath] = (key, verdict)
        return verdict

    def rules(self, folder: str) -> FolderRules:
        path = self.root / folder / IGNORE_NAME
        try:
            st = path.stat()
            signature = (st.st_size, st.st_mtime_ns)
            cached = self._cache.get(folder)
            if cached is not None and cached[0] == signature:
                return cached[1]
            lines = tuple(path.read_text(errors="replace").splitlines()[:10000])
        except OSError:
            signature, lines = (0, 0), ()
        # Blank lines become comments, so that pattern i is line i + 1.
        patterns = [line if line.strip() else "#" for line in lines]
        rules = FolderRules(folder, pathspec.GitIgnoreSpec.from_lines(patterns), lines)
        self._cache[folder] = (signature, rules)
        return rules
