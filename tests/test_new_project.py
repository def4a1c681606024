"""`python scripts/new_project.py NAME`: a fresh fork becomes the user's project in one command.

A copy of the repository (what git lists: tracked files and new ones not ignored) is renamed to `myproj` by
the real script, as a subprocess, and then checked from the outside: the package directory moved, no module
reference to the old name is left (grep, and the imports of every Python file), the distribution name and the
W&B project default follow, and the copy trains (the README's first quick-start command, with only the copy
on PYTHONPATH) and passes a small part of its own test suite (config, schedules, the fork test, and this
file's own checks of the derived package name). The whole suite takes minutes, too long here: it was run by
hand in a renamed copy (`python scripts/new_project.py myproj && python -m pytest -q`: 479 passed, 31 skipped;
6 failures and 2 collection errors in a tree copied while others were editing it, e.g. a test using a name its
module had just stopped exporting: those tests then passed in a renamed and an unrenamed copy of one later snapshot).

A bad NAME, or a tree that was renamed already, is refused with exit status 2, one `error:` line and no
change to any file.

The script rewrites this file too. In a renamed fork it has nothing left to do: the tests of the script skip,
and the checks that the package name is derived, never written down, still run (under the new name).
"""

from __future__ import annotations

import ast
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from template import config
from template.runtime import distributed

from conftest import ROOT, clean_env, read_summary

NEW = "myproj"
OLD = "template"  # the package as shipped: what the script renames (and the only tree it accepts)
SCRIPT = Path("scripts") / "new_project.py"
LEAVE = {"scripts/new_project.py"}  # names the shipped package on purpose: left as it is
TEXT = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt", ".cfg"}
JUNK = {".git", "runs", "outputs", "data", "wandb", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache",
        ".hypothesis", ".benchmarks"}
# A module reference to the old name: a module path or prefix, a path into the package, an import.
LEFTOVER = re.compile(rf"(?<![\w.\-]){OLD}(?:\.[A-Za-z_]|/)|[\"']{OLD}\.[\"']|\bimport {OLD}\b|\bfrom {OLD}\b")
# Written into the copy before the rename (PKG: the package): what must change, and what must not (another word,
# an attribute, a string that is not a module path, a URL).
PROBE = '''\
import PKG
import PKG.config as cfg_module
from PKG import data
from PKG.trainer import train
path, prefix = "PKG/trainer.py", "PKG."
url = "https://example.com/template/readme"
print(PKG.__file__, getattr(PKG, "__name__"))
templates = my_template = "template"
other = self.template + templates.template
'''

needs_template = pytest.mark.skipif(not (ROOT / OLD / "__init__.py").is_file(),
                                    reason=f"no {OLD}/ package: this tree was renamed already")


def repository_files(root: Path) -> list[str]:
    """What a fork starts from: tracked files plus new ones not ignored (no runs/, caches, .git)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                                capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = [p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and not JUNK & set(p.relative_to(root).parts)]
    return [name for name in listed if name and (root / name).is_file()]


def copy_repository(dest: Path) -> Path:
    for name in repository_files(ROOT):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    return dest


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder with its mtime and content hash: "nothing changed" means this is equal."""
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns,
                                              hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


def script_env(root: Path) -> dict[str, str]:
    """The copy alone on the path; no pytest variables leaking into a nested pytest."""
    env = {k: v for k, v in clean_env(PYTHONPATH=str(root)).items() if not k.startswith("PYTEST_")}
    env.pop("PYTHONSTARTUP", None)
    return env


def new_project(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=root, env=script_env(root), capture_output=True,
                          text=True, timeout=120)


def assert_refused(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untouched copy, for the refusals."""
    return copy_repository(tmp_path_factory.mktemp("fresh") / "repo")


@pytest.fixture(scope="module")
def renamed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A copy (with the probe file) renamed to myproj by the real script."""
    root = copy_repository(tmp_path_factory.mktemp("renamed") / "repo")
    (root / "scripts" / "rename_probe.py").write_text(PROBE.replace("PKG", OLD))
    proc = new_project(root, NEW)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, proc


# ---- the package name is derived, never written down (these run in a renamed tree too) ----

def test_wandb_project_default_is_the_package_name() -> None:
    package = Path(config.__file__).resolve().parent.name
    assert config.PACKAGE == package == config.__name__.split(".")[0]
    assert config.TrackingConfig().project == package


def test_timeout_frames_are_found_by_the_package_directory() -> None:
    assert Path(config.__file__).resolve().parent == distributed.PACKAGE_DIR
    assert distributed.in_package(distributed.__file__) and distributed.in_package(config.__file__)
    assert not distributed.in_package(pytest.__file__) and not distributed.in_package("<string>")


def test_default_config_falls_back_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.default_config() == config.DEFAULT_CONFIG  # in a checkout: the one beside the package
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "installed" / "configs" / "default.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(config.ConfigError, match=r"no default config.*pass --config PATH"):
        config.load_config()
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "default.yaml", tmp_path / "configs" / "default.yaml")
    assert config.default_config() == tmp_path / "configs" / "default.yaml"
    assert config.load_config(None, ["train.max_steps=7"]).train.max_steps == 7


# ---- the rename ----

@needs_template
def test_package_directory_moved(renamed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, proc = renamed
    assert not (root / OLD).exists()
    before = {n for n in repository_files(ROOT) if n.startswith(f"{OLD}/")}
    assert {f"{OLD}/{p.relative_to(root / NEW).as_posix()}" for p in (root / NEW).rglob("*") if p.is_file()} == before
    assert f"renamed {OLD}/ -> {NEW}/" in proc.stdout and "pip install -e" in proc.stdout
    assert "python -m pytest" in proc.stdout and re.search(r"rewrote \d+ references in \d+ files", proc.stdout)


@needs_template
def test_no_module_reference_to_the_old_name_is_left(renamed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = renamed
    left, imports = [], []
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if name in LEAVE or not path.is_file() or (path.suffix not in TEXT and name != ".ci/run"):
            continue
        text = path.read_text(encoding="utf-8")
        left += [f"{name}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1)
                 if LEFTOVER.search(line) and "://" not in line]
        if path.suffix == ".py":
            for node in ast.walk(ast.parse(text)):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                           else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                imports += [f"{name}: {m}" for m in modules if m == OLD or m.startswith(f"{OLD}.")]
    assert left == [] and imports == []


@needs_template
def test_rewrites_whole_words_only(renamed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = renamed
    assert (root / "scripts" / "rename_probe.py").read_text() == PROBE.replace("PKG", NEW)
    readme, shipped = (root / "README.md").read_text(), (ROOT / "README.md").read_text()
    assert readme.splitlines()[0] == f"# {NEW}"
    prose = re.compile(rf"(?<![\w.\-/]){OLD}(?![\w\-/]|\.[A-Za-z_])")  # "a training template", "the template's"
    assert len(prose.findall(readme.partition("\n")[2])) == len(prose.findall(shipped.partition("\n")[2])) > 0
    assert "imports: [myproj.data.sklearn_digits]" in (root / "configs" / "digits.yaml").read_text()
    assert "-m mypy myproj" in (root / ".ci" / "run").read_text()


@needs_template
def test_distribution_name_and_wandb_project(renamed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = renamed
    pyproject = (root / "pyproject.toml").read_text()  # (no tomllib on Python 3.10)
    dist = re.search(r'^\[project\]\nname = "([^"]+)"$', pyproject, re.M)
    assert dist and dist.group(1) == NEW.replace("_", "-")
    assert f'\ninclude = ["{NEW}*"]\n' in pyproject and f'\nknown-first-party = ["{NEW}", "bench"]\n' in pyproject
    for yaml_file in (root / "configs").glob("*.yaml"):
        assert f"project: {OLD}" not in yaml_file.read_text(), yaml_file.name
    code = f"from {NEW}.config import TrackingConfig; print(TrackingConfig().project)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=script_env(root), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == NEW


@needs_template
def test_renamed_copy_trains(renamed: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    """The README's first quick-start command, in the copy, with only the copy on the path; W&B offline."""
    from wandb_offline import read_runs

    root, _ = renamed
    out = tmp_path / "run"
    args = ["train.max_steps=20", "scheduler.kwargs.warmup_steps=5", f"output_dir={out}", "train.progress=false"]
    proc = subprocess.run([sys.executable, "scripts/train.py", *args], cwd=root, env=script_env(root),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert read_summary(out)["step"] == 20 and (out / "model.safetensors").is_file()
    assert [run.project for run in read_runs(out / "wandb")] == [NEW]


@needs_template
def test_renamed_copy_passes_part_of_its_suite(renamed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = renamed
    files = ["tests/test_config.py", "tests/test_fork.py"]  # the config and the fork: what a rename breaks first
    quick = ["-k", "not test_script_exit_status_2_without_traceback"]  # 3 x 4 s of subprocesses; test_fork has one
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *quick, *files],
                          cwd=root, env=script_env(root), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert re.search(r"\d+ passed", proc.stdout) and " failed" not in proc.stdout


@needs_template
@pytest.mark.parametrize(("name", "problem"), [
    ("1abc", "not a valid Python package name"), ("my-proj", "perhaps 'my_proj'"), ("class", "keyword"),
    ("torch", "already exists"), ("os", "already exists"), ("numpy", "already exists"), (OLD, "already called"),
    ("tests", "already exists"),
])
def test_bad_name_is_refused_and_changes_nothing(fresh: Path, name: str, problem: str) -> None:
    before = snapshot(fresh)
    line = assert_refused(new_project(fresh, name))
    assert problem in line and line.startswith("error: NAME: ")
    assert snapshot(fresh) == before


@needs_template
def test_usage_errors_are_one_line(fresh: Path) -> None:
    before = snapshot(fresh)
    assert "arguments:" in assert_refused(new_project(fresh))
    assert "arguments:" in assert_refused(new_project(fresh, "a", "b"))
    assert snapshot(fresh) == before


@needs_template
def test_a_renamed_tree_is_refused(renamed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = renamed
    before = snapshot(root)
    assert "already renamed" in assert_refused(new_project(root, "other"))
    assert snapshot(root) == before
