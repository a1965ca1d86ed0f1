"""The docs point at things that exist and install only in ways that work.

README.md and docs/*.md: every relative link target exists; every repository path they quote (a token in code, inline
or fenced, whose first folder is one of the repository's top-level folders, e.g. `benchmarks/results/zoo.md`,
`tests/api_surfaces/`) exists; every cited notes file (`NAME.md` in capitals, anywhere) exists; no line tells users to
`pip install mlic-edge` from an index, as no public index serves it yet; a wheel file name quoted carries the
package's version; every extra quoted (`.[train,cuda12]`, `[cuda13]`) is one pyproject.toml defines."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE_CODE = re.compile(r"`((?:[^`\n]|\n(?!\s*\n))+)`")  # a span may wrap onto the next line, not past a paragraph
LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
NOTES_FILE = re.compile(r"(?<![\w/.-])([A-Z][A-Z0-9_-]*\.md)\b")
# `pip install mlic-edge`, `pip install "mlic-edge[edge]"`, `pip install -U 'mlic-edge[train]'`: a name for an index
PIP_FROM_INDEX = re.compile(r"pip3? install\s+(?:-{1,2}[\w-]+(?:=\S+)?\s+)*[\"']?mlic-edge(?![\w-]|\.\w)")
WHEEL = re.compile(r"mlic_edge-([^-\s/\"'`]+)-py3-none-any\.whl")
PLACEHOLDER = set("<>{}*$…|")
# `.[train,cuda12]`, `mlic_edge-0.1.0-py3-none-any.whl[edge]`, `mlic-edge[edge]`, a bare `[cuda13]`; not another
# package's extra (`tritonclient[grpc]`) or an index (`x[0]`)
EXTRAS = re.compile(r"(?:(?<=\.whl)|(?<=mlic-edge)|(?<![\w\]-]))\[([a-z][a-z0-9-]*(?:,[a-z][a-z0-9-]*)*)\]")


def _top_level_folders() -> set[str]:
    """The repository's top-level folders: those on disk less what .gitignore ignores (runs/, .venv/, build/ ...)."""
    ignored = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
               if line.strip().endswith("/") and "*" not in line}
    return {path.name for path in ROOT.iterdir() if path.is_dir() and path.name not in ignored
            and path.name != ".git" and not path.name.endswith(".egg-info")}


def _code(text: str) -> list[str]:
    """Inline code spans and fenced blocks, each as text."""
    fenced = FENCE.findall(text)
    return fenced + INLINE_CODE.findall(FENCE.sub("", text))


def _repository_paths(code: str, folders: set[str]) -> list[str]:
    paths = []
    for token in re.split(r"[\s=\"'`(),;\[\]]+", code):
        token = token.rstrip(":.")
        path = token.split("#", 1)[0]
        if "/" in path and path.split("/", 1)[0] in folders and not PLACEHOLDER & set(path):
            paths.append(path)
    return paths


def _where(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


def test_docs_exist():
    assert (ROOT / "README.md").is_file() and len(DOCS) > 1


def test_relative_links_resolve():
    missing = []
    for doc in DOCS:
        for target in LINK.findall(FENCE.sub("", doc.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                continue  # http(s), mailto, an anchor in the same page
            path = target.split("#", 1)[0]
            if not (doc.parent / path).exists():
                missing.append(f"{_where(doc)}: ({target})")
    assert not missing, "links to files that are not in the repository:\n" + "\n".join(missing)


def test_quoted_repository_paths_exist():
    folders = _top_level_folders()
    assert {"mlic_edge", "runtime", "tests", "docs"} <= folders, folders
    missing, seen = [], 0
    for doc in DOCS:
        for code in _code(doc.read_text()):
            for path in _repository_paths(code, folders):
                seen += 1
                if not (ROOT / path).exists():
                    missing.append(f"{_where(doc)}: `{path}`")
    assert seen > 20, f"only {seen} repository paths found: the rule no longer sees the docs' paths"
    assert not missing, "paths quoted in the docs that are not in the repository:\n" + "\n".join(missing)


def test_cited_notes_files_exist():
    missing = [f"{_where(doc)}: {name}" for doc in DOCS for name in NOTES_FILE.findall(doc.read_text())
               if not (doc.parent / name).exists() and not (ROOT / name).exists()]
    assert not missing, "files cited that are not in the repository:\n" + "\n".join(missing)


def test_no_install_from_an_index():
    offenders = [f"{_where(doc)}:{number}: {line.strip()}" for doc in DOCS
                 for number, line in enumerate(doc.read_text().splitlines(), 1) if PIP_FROM_INDEX.search(line)]
    assert not offenders, ("mlic-edge is not on a public index: install from the source tree (pip install \".[edge]\") "
                           "or a built wheel, not by name:\n" + "\n".join(offenders))


def test_rule_catches_the_forms_it_is_for():
    for line in ('pip install mlic-edge[edge]', 'pip install "mlic-edge[edge,cuda12]"', "pip install 'mlic-edge[train]'",
                 "Installs: `pip install mlic-edge` (edge core)", "pip install -U mlic-edge", "pip install mlic-edge", "run pip install mlic-edge."):
        assert PIP_FROM_INDEX.search(line), line
    for line in ('pip install ".[edge]"', 'pip install "dist/mlic_edge-0.1.0-py3-none-any.whl[edge]"',
                 "pip install mlic-edge-tools", "pip install -e '.[train]'"):
        assert not PIP_FROM_INDEX.search(line), line
    folders = {"benchmarks", "tests", "calibration"}
    assert _repository_paths("see benchmarks/results/zoo.md, tests/api_surfaces/ and calibration/<key>/", folders) \
        == ["benchmarks/results/zoo.md", "tests/api_surfaces/"]
    assert NOTES_FILE.findall("checked on a CPU (NOTES-TENSORRT.md); see docs/design.md") == ["NOTES-TENSORRT.md"]


def test_quoted_extras_exist():
    defined = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    quoted = [(doc, extra) for doc in DOCS for code in _code(doc.read_text()) for group in EXTRAS.findall(code)
              for extra in group.split(",")]
    assert len(quoted) > 10, f"only {len(quoted)} extras found: the rule no longer sees the docs' install lines"
    unknown = sorted({f"{_where(doc)}: [{extra}]" for doc, extra in quoted if extra not in defined})
    assert not unknown, f"extras quoted that pyproject.toml does not define ({sorted(defined)}):\n" + "\n".join(unknown)


def test_extras_rule_catches_the_forms_it_is_for():
    found = EXTRAS.findall('pip install -e ".[train,cuda12]" "dist/mlic_edge-0.1.0-py3-none-any.whl[edge]" '
                           "mlic-edge[qat] `[cuda13]` [edge,cuda11] tritonclient[grpc] x[0] list[int] [ -e f ]")
    assert found == ["train,cuda12", "edge", "qat", "cuda13", "edge,cuda11"]


def test_quoted_wheel_names_carry_the_version():
    import mlic_edge  # loads nothing heavy

    version = mlic_edge.__version__
    stale = [f"{_where(doc)}: mlic_edge-{found}-py3-none-any.whl" for doc in DOCS
             for found in WHEEL.findall(doc.read_text()) if found != version]
    assert not stale, f"wheel names that are not this version's ({version}):\n" + "\n".join(stale)
