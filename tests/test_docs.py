"""The documentation as a newcomer meets it in a clone: the README short and the two commands
first, every link and anchor resolving, every command of a code block (and every inline
``python ...`` command) taken by the real parsers, and docs/options.md exactly what the
argument parser says (tools/options_doc.py writes it).

Commands are checked without running them: ``python run_search.py ...`` lines go through
``run_search.build_parser`` (and, for a search, the settings check), ``python bench/X.py ...``
through the argument parser of that script's ``main`` (stopped right after parsing), other
``python FILE`` lines must name a file of the project, ``python -m pytest`` lines existing
test files and declared markers, ``pip install`` lines existing constraint files and extras.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest
from _tree import ROOT, project_files

import run_search

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

README = ROOT / "README.md"
README_LIMIT = 20_000  # bytes: a few screens (the issue that split it: 66 KB)
PAGES = [p for p in project_files("*.md") if p.relative_to(ROOT).parts[0] != "tests"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# A synopsis, not a command: `run_search.py [search] OPTIONS`, `COMMAND --help`, `bench/NAME.py`, `...`.
_SYNOPSIS = re.compile(r"^\[.*\]$|^(OPTIONS|COMMAND|\.\.\.)$|/[A-Z_]+\.py$")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _without_code(text: str) -> str:
    """The prose of a page: fenced blocks and inline code removed (a link there is an example)."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(lang.strip(), body) for lang, body in re.findall(r"^```([^\n]*)\n(.*?)^```", text, re.M | re.S)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a page (a repeated heading gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    prose = re.sub(r"^```.*?^```", "", _text(path), flags=re.M | re.S)
    for heading in re.findall(r"^#{1,6} +(.+?) *#* *$", prose, re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


# ----------------------------------------------------------------------------- the README


def test_readme_is_a_few_screens_and_starts_with_the_two_commands() -> None:
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move details into docs/ (limit {README_LIMIT})"
    text = _text(README)
    first, second = [body.strip() for _, body in _code_blocks(text)[:2]]
    assert "python run_search.py" in first and first.startswith("pip install -c constraints.txt -e ."), first
    assert second == 'pip install -c constraints.txt -e ".[test]" && python -m pytest', second
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[0] == "The two commands", headings
    # the sections other work adds lines to
    assert {"Reading the report", "GPUs", "Clusters", "Main options", "Where results go"} <= set(headings), headings


def test_every_page_of_docs_is_linked_from_the_readme() -> None:
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)", _text(README)))
    pages = {p.relative_to(ROOT).as_posix() for p in PAGES if p.parent == ROOT / "docs"}
    assert pages <= linked, f"pages a reader of the README cannot find: {sorted(pages - linked)}"


# ----------------------------------------------------------------------------- links


def _links(path: Path) -> list[str]:
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _without_code(_text(path)))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_resolves_in_a_clone(page: Path) -> None:
    files = {p.relative_to(ROOT).as_posix() for p in project_files()}
    folders = {Path(name).parent.as_posix() for name in files} | {
        parent.as_posix() for name in files for parent in Path(name).parents
    }
    dead = []
    for link in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto: (no network here)
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        try:
            relative = path.relative_to(ROOT).as_posix()
        except ValueError:
            dead.append(f"{link} (outside the repository)")
            continue
        if relative not in files and relative.rstrip("/") not in folders:
            dead.append(f"{link} (no such file in a clone: {relative})")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            dead.append(f"{link} (no heading #{anchor} in {relative})")
    assert not dead, f"{page.relative_to(ROOT)}: " + "; ".join(dead)


def test_slugs_are_githubs() -> None:
    assert slug("Early stopping (`--early-stop mo-asha`)") == "early-stopping---early-stop-mo-asha"
    assert slug("Offline data sets: `digits` and `digits32`") == "offline-data-sets-digits-and-digits32"
    assert slug("Benchmarks (`bench/`)") == "benchmarks-bench"


# ----------------------------------------------------------------------------- commands


def _commands(page: Path) -> list[str]:
    """Shell commands of a page: lines of its shell code blocks, and inline ``python ...`` /
    ``pip ...`` spans, continuation lines joined, ``$ `` prompts and ``&&`` chains split."""
    text = _text(page)
    lines = []
    for lang, body in _code_blocks(text):
        if lang in ("", "bash", "sh", "shell", "console"):
            lines += body.replace("\\\n", " ").splitlines()
    for span in re.findall(r"`([^`]+)`", _without_fences(text)):
        if span.startswith(("python ", "pip ")):
            lines.append(" ".join(span.split()))
    commands = []
    for line in lines:
        line = line.strip().removeprefix("$ ")
        for part in line.split("&&"):
            part = part.strip()
            if part.startswith(("python ", "pip ", "CI=true bash ", "bash ")):
                commands.append(part)
    return commands


def _without_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _argv(command: str) -> list[str]:
    return shlex.split(command, comments=True)


ALL_COMMANDS = [
    (page, command)
    for page in PAGES
    for command in _commands(page)
    if not any(_SYNOPSIS.search(token) for token in _argv(command))  # a synopsis, not a command
]


def _check_run_search(argv: list[str]) -> None:
    if argv and argv[0] not in run_search.COMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["search", *argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = run_search.build_parser().parse_args(argv)
        except SystemExit as stop:
            assert stop.code in (0, None), err.getvalue().strip()
            return
    if args.command == "search":
        run_search.settings_from_args(args)  # the settings check: a stale value fails here


class _Parsed(Exception):
    """Raised by the stand-in parse_args once a script's arguments have been parsed."""


def _check_script(path: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse ``argv`` with the argument parser ``main`` of the script builds, and stop there."""
    if path.parent == ROOT / "bench":
        module = importlib.import_module(f"bench.{path.stem}")
    else:
        spec = importlib.util.spec_from_file_location(f"_doc_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            module.main(argv)
        except _Parsed:
            return
        except SystemExit as stop:
            assert stop.code in (0, None), err.getvalue().strip()
            return
    raise AssertionError(f"{path.name}: main() returned without parsing its arguments")


def _check_pytest(argv: list[str]) -> None:
    markers = {line.split(":")[0].strip() for line in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
    for i, arg in enumerate(argv):
        if argv[i - 1] == "-m":
            unknown = set(re.findall(r"\w+", arg)) - markers - {"not", "and", "or"}
            assert not unknown, f"no marker {unknown} in pyproject.toml"
        elif arg.startswith("tests/"):
            assert (ROOT / arg.split("::")[0]).is_file(), f"{arg} does not exist"


def _check_pip(argv: list[str]) -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for i, arg in enumerate(argv):
        if argv[i - 1] in ("-c", "-r"):
            assert (ROOT / arg).is_file(), f"{arg} does not exist"
        if match := re.fullmatch(r"\.\[([\w,-]+)\]", arg):
            assert set(match.group(1).split(",")) <= extras, f"{arg}: extras are {sorted(extras)}"


@pytest.mark.parametrize(
    "page, command", ALL_COMMANDS, ids=[f"{p.relative_to(ROOT).as_posix()}: {c[:60]}" for p, c in ALL_COMMANDS]
)
def test_every_command_of_the_docs_is_taken_by_the_real_parser(page: Path, command: str, monkeypatch) -> None:
    argv = _argv(command)
    if argv[0] == "CI=true":
        argv = argv[1:]
    if argv[0] == "bash":
        assert (ROOT / argv[1]).is_file(), f"{argv[1]} does not exist"
    elif argv[0] == "pip":
        _check_pip(argv)
    elif argv[:3] == ["python", "-m", "pytest"]:
        _check_pytest(argv[3:])
    elif argv[:2] == ["python", "-m"]:
        assert argv[2] in ("venv", "pip"), f"python -m {argv[2]}: not a command these pages know"
    elif argv[0] == "python":
        script = ROOT / argv[1]
        assert script.is_file(), f"{argv[1]} does not exist in a clone"
        if script.name == "run_search.py":
            _check_run_search(argv[2:])
        else:
            _check_script(script, argv[2:], monkeypatch)


def test_the_commands_are_found() -> None:
    """The collection above sees the commands it is meant to check (not an empty list by a
    broken pattern)."""
    readme = [command for page, command in ALL_COMMANDS if page == README]
    assert any(c.startswith("python run_search.py --backend ray") for c in readme), readme
    assert any(c.startswith("python bench/") for _, c in ALL_COMMANDS)
    assert len(ALL_COMMANDS) > 30


def test_a_stale_command_is_caught(monkeypatch) -> None:
    for stale in ("python run_search.py --early-stop asha", "python run_search.py --tune lr,lr"):
        with pytest.raises(Exception):  # noqa: B017 (SettingsError or the parser's AssertionError)
            _check_run_search(_argv(stale)[2:])
    with pytest.raises(AssertionError):
        _check_script(ROOT / "bench" / "gpu.py", ["--no-such-option"], monkeypatch)


# ----------------------------------------------------------------------------- options reference


def _options_doc():
    spec = importlib.util.spec_from_file_location("options_doc", ROOT / "tools" / "options_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_options_reference_is_what_the_parser_says() -> None:
    written = _text(ROOT / "docs" / "options.md")
    assert written == _options_doc().render(run_search.build_parser()), (
        "docs/options.md is out of date: run python tools/options_doc.py"
    )


def _help_options(command: str) -> set[str]:
    """The options ``run_search.py COMMAND --help`` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        run_search.build_parser().parse_args([command, "--help"])
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", out.getvalue())) - {"--help"}


def test_options_reference_has_every_option_of_every_help() -> None:
    """Independently of the generator: each command's section names every option that
    ``run_search.py COMMAND --help`` prints."""
    text = _text(ROOT / "docs" / "options.md")
    sections = dict(re.findall(r"^## `(\w+)`\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    for command in run_search.COMMANDS:
        options = _help_options(command)
        assert options and command in sections, f"docs/options.md has no section for {command}"
        missing = {o for o in options if f"`{o}`" not in sections[command]}
        assert not missing, f"docs/options.md, {command}: missing {sorted(missing)}"


def test_main_options_of_the_readme_exist() -> None:
    table = re.search(r"^## Main options\n(.*?)^## ", _text(README), re.M | re.S).group(1)
    names = {n for cell in re.findall(r"^\|([^|]+)\|", table, re.M) for n in re.findall(r"--[a-z][a-z-]*", cell)}
    assert len(names) > 10, table
    unknown = names - _help_options("search")
    assert not unknown, f"README's main options that the parser does not know: {sorted(unknown)}"
