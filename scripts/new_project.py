#!/usr/bin/env python
"""Make a fresh fork your project in one command: `python scripts/new_project.py NAME`.

What it changes, in a fork that still has the shipped `template/` package:
- the package directory `template/` -> `NAME/` (`git mv` in a git checkout, so history follows; else a rename);
- every reference to the package in the text files of the tree (tracked and untracked-but-not-ignored files in
  a git checkout; otherwise every file outside runs/, data/, caches and virtual environments): module paths
  (`template.x`, in code, strings, `configs/*.yaml` `imports:` and docs), imports (`import template`,
  `from template import ...`), paths (`template/...`), and, in Python files that import the package itself,
  the bare module name (`getattr(template, ...)`);
- the W&B project (`project: template` in configs/*.yaml; the schema's default, `tracking.project` in
  NAME/config.py, is the package's own name and follows by itself);
- pyproject.toml: `[project] name` (NAME with underscores as dashes), the packages to include and ruff's
  first-party packages; the `mypy` target of .ci/run; the README's title.
Words are matched whole: `templates`, `self.template`, `my_template` or `template-bench` stay as they are.
It uses the standard library only and never imports the package, so it runs before and after any install.

A bad NAME (not an ASCII identifier, a Python keyword, the current name, an importable module such as `torch`
or `os`, or a file or folder already in the tree), or a tree without `template/` (already renamed): exit
status 2, one line `error: ...` on stderr, and nothing changed.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import io
import keyword
import os
import re
import subprocess
import sys
import tokenize
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
OLD = "template"  # the package directory of the repository as shipped
LEAVE = frozenset({"scripts/new_project.py"})  # names the shipped package on purpose (and refuses a renamed tree)
TEXT_SUFFIXES = frozenset({".py", ".pyi", ".md", ".rst", ".txt", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh"})
SKIP_DIRS = frozenset({".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis",
                       ".benchmarks", ".venv", "venv", ".tox", "node_modules", "wandb", "build", "dist"})
SKIP_TOP = frozenset({"runs", "outputs", "data"})  # ignored top-level output folders (template/data/ is code)
FILE_SUFFIX = r"(?:py|pyc|pyi|md|rst|txt|json|jsonl|yaml|yml|toml|cfg|ini|sh|html|png)\b"
NAME_RE = re.compile(r"[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?")  # an identifier that is also a distribution name


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2, like template/cli.py
        fail(f"arguments: {message}")


def fail(message: str, status: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def check_name(name: str, root: Path) -> None:
    """Refuse, before anything is touched, a NAME that cannot be the package (and distribution) name."""
    if not (root / OLD / "__init__.py").is_file():
        fail(f"NAME: no {OLD}/ package in {root}: this tree was already renamed (or is not the template); "
             "nothing changed")
    if not name.isascii() or not name.isidentifier():
        fixed = re.sub(r"[^0-9A-Za-z_]", "_", name)
        hint = f" (perhaps {fixed!r})" if fixed.isidentifier() and fixed != name and NAME_RE.fullmatch(fixed) else ""
        fail(f"NAME: {name!r} is not a valid Python package name: letters, digits and underscores, not starting "
             f"with a digit{hint}")
    if keyword.iskeyword(name):
        fail(f"NAME: {name!r} is a Python keyword; pick another name")
    if name == OLD:
        fail(f"NAME: the package is already called {OLD!r}; pick a new name")
    if not NAME_RE.fullmatch(name):
        fail(f"NAME: {name!r} must start with a letter and end with a letter or digit (it is also the "
             "distribution name, with underscores as dashes)")
    for taken in (root / name, root / f"{name}.py"):
        if taken.exists() or taken.is_symlink():
            fail(f"NAME: {taken.relative_to(root)} already exists in {root}; pick another name")
    origin = None
    if name in sys.stdlib_module_names or name in sys.builtin_module_names:
        origin = "the standard library"
    else:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # a broken or odd module of that name is still a clash
            spec = None
            origin = "an installed module"
        if spec is not None:
            origin = spec.origin if spec.origin not in (None, "namespace") else "an installed namespace package"
    if origin is not None:
        fail(f"NAME: a module named {name!r} already exists ({origin}): the package would shadow it or be "
             "shadowed by it; pick another name")


def is_git_root(root: Path) -> bool:
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return top.returncode == 0 and Path(top.stdout.strip()).resolve() == root.resolve()


def tree_files(root: Path, git: bool) -> list[str]:
    """The tree's files, relative and with forward slashes: what git shows (tracked + untracked, not ignored)."""
    if git:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                                capture_output=True, check=True, timeout=120).stdout.decode().split("\0")
        return sorted({name for name in listed if name and (root / name).is_file() and not (root / name).is_symlink()})
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")
                       and not (here == root and d in SKIP_TOP)]
        found += [(here / f).relative_to(root).as_posix() for f in filenames if not (here / f).is_symlink()]
    return sorted(found)


def is_text(path: Path) -> bool:
    if path.suffix in TEXT_SUFFIXES:
        return True
    if path.suffix:
        return False
    with path.open("rb") as f:
        return f.read(2) == b"#!"  # an extensionless script such as .ci/run


Rule = tuple[str, "re.Pattern[str]", Callable[[re.Match[str]], str]]


def rules(old: str, new: str) -> list[Rule]:
    o = re.escape(old)
    alone = r"(?![\w\-/])"  # the whole word: not `templates`, `template-bench`, `template/...`
    edge = r"(?<![\w.\-])"  # not the tail of `my_template`, `self.template`, `my-template`

    def keep_urls(m: re.Match[str]) -> str:  # https://host/template/... is someone else's path
        start = max(m.string.rfind(c, 0, m.start()) for c in " \t\n\"'`(<[")
        return m.group(0) if "://" in m.string[start + 1:m.start()] else new

    return [
        ("module paths", re.compile(edge + o + r"(?=\.(?!" + FILE_SUFFIX + r")[A-Za-z_])"), lambda m: new),
        ("module paths", re.compile(r"(?<=[\"'])" + o + r"(?=\.[\"'])"), lambda m: new),  # "template." prefixes
        ("imports", re.compile(r"(?<=\bimport )" + o + r"(?![\w.\-])"), lambda m: new),
        ("imports", re.compile(r"(?<=\bfrom )" + o + r"(?=[ \t]+import\b)"), lambda m: new),
        ("paths", re.compile(r"(?<![\w\-])(?<!\w\.)" + o + r"(?=/)"), keep_urls),  # ./template/ too
        ("commands", re.compile(r"(?<=\bmypy )" + o + alone), lambda m: new),
        ("commands", re.compile(r"(?<=--cov=)" + o + alone), lambda m: new),
        ("W&B project", re.compile(r"(?<=\bproject: )" + o + alone), lambda m: new),
        ("W&B project", re.compile(r"(?<=--project )" + o + alone), lambda m: new),
        ("W&B project", re.compile(r"(?<=\bproject=)" + o + alone), lambda m: new),
    ]


def bare_module_names(text: str, old: str, new: str) -> tuple[str, int]:
    """In Python that imports the package itself (`import template`, no `as`), its other uses as a name."""
    try:
        imports = [node for node in ast.walk(ast.parse(text)) if isinstance(node, ast.Import)]
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (SyntaxError, ValueError, tokenize.TokenError):
        return text, 0
    if not any(alias.asname is None and (alias.name == old or alias.name.startswith(old + "."))
               for node in imports for alias in node.names):
        return text, 0
    skip = {tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT}
    significant = [t for t in tokens if t.type not in skip]
    spots = []
    for i, tok in enumerate(significant):
        if tok.type != tokenize.NAME or tok.string != old:
            continue
        before = significant[i - 1].string if i else ""
        after = significant[i + 1].string if i + 1 < len(significant) else ""
        if before not in (".", "def", "class", "as") and after != "=":  # not an attribute, definition or kwarg
            spots.append(tok.start)
    if not spots:
        return text, 0
    lines = text.splitlines(keepends=True)
    for row, col in sorted(spots, reverse=True):
        line = lines[row - 1]
        lines[row - 1] = line[:col] + new + line[col + len(old):]
    return "".join(lines), len(spots)


def rewrite(text: str, relpath: str, old: str, new: str, dist: str) -> tuple[str, Counter[str]]:
    counts: Counter[str] = Counter()
    if relpath.endswith(".py"):
        text, n = bare_module_names(text, old, new)
        counts["module names"] += n
    for kind, pattern, replace in rules(old, new):
        hits = 0

        def counted(m: re.Match[str], replace: Callable[[re.Match[str]], str] = replace) -> str:
            nonlocal hits
            out = replace(m)
            hits += out != m.group(0)  # a kept URL is no change
            return out

        text = pattern.sub(counted, text)
        counts[kind] += hits
    if relpath.endswith((".toml", ".cfg", ".ini")):  # package lists: include = ["template*"], known-first-party
        text, n = re.subn(r'(?<=["\'])' + re.escape(old) + r'(?=\*?["\'])', new, text)
        counts["package lists"] += n
    if relpath == "pyproject.toml":
        text, n = project_name(text, dist)
        counts["distribution name"] += n
    if relpath == "README.md" and text.startswith("# "):
        first, _, rest = text.partition("\n")
        if first != f"# {new}":
            text = f"# {new}\n{rest}"
            counts["title"] += 1
    return text, +counts


def project_name(text: str, dist: str) -> tuple[str, int]:
    """`name = "..."` in pyproject.toml's [project] table."""
    lines = text.splitlines(keepends=True)
    table = None
    for i, line in enumerate(lines):
        header = re.match(r"\s*\[([^\[\]]+)\]\s*(?:#.*)?$", line)
        if header:
            table = header.group(1).strip()
        elif table == "project":
            m = re.match(r'(\s*name\s*=\s*)(["\'])[^"\']*\2(.*)$', line, re.S)
            if m:
                lines[i] = f'{m.group(1)}"{dist}"{m.group(3)}'
                return "".join(lines), int(lines[i] != line)
    return text, 0


def current_dist(pyproject: Path) -> str | None:
    """The distribution name in pyproject.toml's [project] table, before the rename."""
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return None
    m = re.search(r'^\[project\][^\[]*?^\s*name\s*=\s*["\']([^"\']+)', text, re.M | re.S)
    return m.group(1) if m else None


def moved(relpath: str, old: str, new: str) -> str:
    return new + relpath[len(old):] if relpath.startswith(old + "/") else relpath


def plan(root: Path, files: list[str], old: str, new: str, dist: str) -> Iterator[tuple[str, str, Counter[str]]]:
    for relpath in files:
        path = root / relpath
        if relpath in LEAVE or not is_text(path):
            continue
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        changed, counts = rewrite(text, relpath, old, new, dist)
        if changed != text:
            yield relpath, changed, counts


def rename_package(root: Path, old: str, new: str, git: bool) -> str:
    if git:
        proc = subprocess.run(["git", "mv", old, new], cwd=root, capture_output=True, text=True, timeout=120)
        if proc.returncode == 0:
            return "git mv"
        if (root / new).exists():  # git moved it after all (never expected): do not move twice
            return "git mv"
    (root / old).rename(root / new)
    return "rename"


def main(argv: list[str] | None = None) -> None:
    p = _Parser(description="Turn this fork into your project: rename the package template/ to NAME/ and every "
                "reference to it (imports, configs, docs, pyproject.toml, the W&B project default).")
    p.add_argument("name", metavar="NAME", help="the new package name, a Python identifier such as my_project")
    args = p.parse_args(argv)
    name: str = args.name
    check_name(name, ROOT)
    dist = name.replace("_", "-")
    git = is_git_root(ROOT)
    old_dist = current_dist(ROOT / "pyproject.toml")
    try:
        files = tree_files(ROOT, git)
        changes = list(plan(ROOT, files, OLD, name, dist))  # everything read and rewritten in memory first
    except (OSError, subprocess.SubprocessError) as exc:
        fail(f"cannot read the tree in {ROOT} ({exc}); nothing changed", status=1)
    try:
        how = rename_package(ROOT, OLD, name, git)
        for relpath, text, _ in changes:
            (ROOT / moved(relpath, OLD, name)).write_bytes(text.encode("utf-8"))
    except OSError as exc:
        fail(f"renaming stopped part way ({exc}); see `git status` for what changed", status=1)

    kinds: Counter[str] = Counter()
    by_top: dict[str, list[int]] = {}
    for relpath, _, counts in changes:
        kinds.update(counts)
        top = moved(relpath, OLD, name).split("/")[0] + ("/" if "/" in relpath else "")
        entry = by_top.setdefault(top, [0, 0])
        entry[0] += 1
        entry[1] += sum(counts.values())
    print(f"renamed {OLD}/ -> {name}/ ({how})")
    print(f"rewrote {sum(kinds.values())} references in {len(changes)} files: "
          + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()))
    for top, (n_files, n_refs) in sorted(by_top.items()):
        print(f"  {top:<24} {n_refs:>5} in {n_files} files")
    print(f"distribution name: {dist} (pyproject.toml); W&B project default: {name}")
    print("next:")
    print('  pip install -e ".[dev]"')
    print("  python -m pytest")
    if old_dist:
        print(f"(if this checkout was pip-installed before the rename, run `pip uninstall -y {old_dist}` first)")


if __name__ == "__main__":
    main()
