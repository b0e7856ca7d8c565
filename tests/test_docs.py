"""README.md and docs/*.md name only what exists: every repository path and link (with its heading anchor), every
dotted name in the package, every `make` target and every `--flag`, so that a rename which leaves a document behind
fails here instead of misleading a reader.

Flags are checked against the parser of the command they are given to: run_object_detection.py's
(`detr_ft.config.argument_parser`), eval_checkpoints', inference's, cppe5_download's, make_synthetic's, the bench's
and scripts/gpu_check.sh's options; a `make TARGET ARGS="..."` passes its flags to the command the target's recipe in
the Makefile runs. A flag named outside a command must belong to one of those parsers. Other programs' flags
(torchrun, pip, pytest ...) come from OTHER_PROGRAMS, a small hand list: their renames are not the project's.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))

OTHER_PROGRAMS = {
    "torchrun": {"--nproc_per_node", "--nnodes", "--standalone"},
    "gaudi_spawn.py": {"--world_size", "--use_mpi"},
    "pip": {"--no-deps", "--no-index", "--only-binary", "--python-version", "--implementation", "--platform"},
    "docker": {"--runtime", "--cap-add", "--net", "--ipc"},
    "pytest": set(),
    "grep": set(),
    "unshare": {"--mount"},
}
# The project's commands: how a document starts one, and the name its options are kept under.
PROJECT_MODULES = {
    "detr_ft.evaluation.eval_checkpoints": "eval_checkpoints",
    "detr_ft.evaluation.inference": "inference",
    "detr_ft.data.cppe5_download": "cppe5_download",
    "detr_ft.data.make_synthetic": "make_synthetic",
    "detr_ft.demo": "demo",
    "bench.run_bench": "bench",
}
ENTRY, GPU_CHECK = "run_object_detection.py", "scripts/gpu_check.sh"
# Makefile variables whose value is flags for a command: ARGS for the target's own, the others for these.
MAKE_FLAG_VARIABLES = {"ARGS": None, "BENCH_ARGS": "bench", "PYTEST_ARGS": "pytest"}
SHELL_SEPARATORS = {"|", "||", "&&", ";", ">", "<"}

FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")
# A path: words joined by slashes, or one word with a file suffix; not starting inside a longer path or a URL.
PATH = re.compile(r"(?<![\w./:@~-])((?:[\w.-]+/)+[\w.-]*|[\w-]+\.(?:py|json|md|sh|txt|cfg|toml))(?![\w/])")
DOTTED = re.compile(r"(?<![\w./-])((?:detr_ft|patches|bench)(?:\.\w+)+)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
FENCE = re.compile(r"^\s*```(\w*)\s*$")


def option_strings(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings if option.startswith("--")}


@cache
def project_options() -> dict[str, set[str]]:
    """The options of every project command, by the name PROJECT_MODULES and `command_of` give it."""
    from transformers import HfArgumentParser

    from bench.run_bench import BenchArguments
    from detr_ft.config import argument_parser
    from detr_ft.data.cppe5_download import Cppe5Arguments
    from detr_ft.data.make_synthetic import SyntheticArguments
    from detr_ft.evaluation.eval_checkpoints import EvalCheckpointsArguments
    from detr_ft.evaluation.inference import InferenceArguments

    gpu_check = (REPO / GPU_CHECK).read_text()
    return {
        "entry": option_strings(argument_parser()),
        "eval_checkpoints": option_strings(HfArgumentParser(EvalCheckpointsArguments)),
        "inference": option_strings(HfArgumentParser(InferenceArguments)),
        "cppe5_download": option_strings(HfArgumentParser(Cppe5Arguments)),
        "make_synthetic": option_strings(HfArgumentParser(SyntheticArguments)),
        "bench": option_strings(HfArgumentParser(BenchArguments)),
        "demo": set(),  # `python -m detr_ft.demo [canvases]`: no flags
        # The options the script compares its arguments with ("${1:-}" == "--tiny", or a case pattern).
        "gpu_check": set(re.findall(r'==\s*"(--[\w-]+)"', gpu_check)) | set(re.findall(r"^\s*(--[\w-]+)\)", gpu_check,
                                                                                        re.MULTILINE)),
    }


def command_of(text: str) -> str | None:
    """The command a shell text starts (the first one it names), by PROJECT_MODULES' names, "entry", "gpu_check" or an
    OTHER_PROGRAMS key; None when it names none."""
    tokens = text.split()
    for i, token in enumerate(tokens):
        if token.endswith(ENTRY):
            return "entry"
        if token.endswith(GPU_CHECK):
            return "gpu_check"
        if token == "-m" and i + 1 < len(tokens):
            return PROJECT_MODULES.get(tokens[i + 1], tokens[i + 1])
        if Path(token).name in OTHER_PROGRAMS:
            return Path(token).name
    return None


@cache
def makefile_targets() -> dict[str, str | None]:
    """Every target of the Makefile and the command its recipe runs (`command_of`), None for one that runs none."""
    targets: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith("\t"):
            for name in current:
                targets[name].append(line)
            continue
        rule = re.match(r"^([\w./$()-][\w./$() -]*?)\s*:(?!=)", line)
        current = [] if rule is None else [name for name in rule.group(1).split() if not name.startswith((".", "$"))]
        for name in current:
            targets.setdefault(name, [])
    return {name: command_of("\n".join(recipe)) for name, recipe in targets.items()}


@cache
def tracked_roots() -> frozenset[str]:
    """The names at the repository's root that git tracks: a path starting with one is a repository path."""
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return frozenset(line.split("/")[0] for line in listed.splitlines())


@cache
def is_ignored(relative: str) -> bool:
    """Whether git ignores the path: something a command writes (bench/results.json), not a repository file."""
    return subprocess.run(["git", "check-ignore", "-q", relative], cwd=REPO).returncode == 0


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a document's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for line in strip_fenced_blocks(markdown).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).replace("`", "").lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def strip_fenced_blocks(markdown: str) -> str:
    return re.sub(r"^\s*```.*?^\s*```\s*$", "", markdown, flags=re.MULTILINE | re.DOTALL)


def code_blocks(markdown: str) -> tuple[list[tuple[str, str]], str]:
    """(language, text) of every fenced and indented code block ("" for no language), and the prose around them."""
    blocks, prose = [], []
    block: list[str] | None = None
    language, fenced, previous_blank = "", False, True
    for line in markdown.splitlines():
        fence = FENCE.match(line)
        if fenced:
            if fence:
                blocks.append((language, "\n".join(block)))
                fenced, block = False, None
            else:
                block.append(line)
            continue
        if fence:
            fenced, language, block = True, fence.group(1), []
            continue
        list_item = re.match(r"\s*(?:[-*+|]|\d+\.)\s", line) is not None
        if line.startswith("    ") and (block is not None or (previous_blank and not list_item)):
            block = [*(block or []), line[4:]]
            continue
        if block is not None and not line.strip():
            block.append("")
            continue
        if block is not None:
            blocks.append(("", "\n".join(block)))
            block = None
        prose.append(line)
        previous_blank = not line.strip()
    if block is not None:
        blocks.append((language if fenced else "", "\n".join(block)))
    return blocks, "\n".join(prose)


def split_comment(line: str) -> tuple[str, str]:
    """A shell line's command and its comment (from a # that starts a word)."""
    comment = re.search(r"(?:^|\s)#", line)
    return (line, "") if comment is None else (line[:comment.start()], line[comment.end():])


def shell_commands(block: str) -> list[tuple[str, str]]:
    """(command, comments) of each shell command of a block: continuation lines joined, quotes kept across lines."""
    commands, pending, comments = [], "", ""
    for line in block.splitlines():
        command, comment = split_comment(line)
        pending, comments = f"{pending}\n{command}" if pending else command, f"{comments} {comment}"
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        try:
            shlex.split(pending)
        except ValueError:  # a quote still open: the command goes on
            continue
        commands.append((pending, comments))
        pending, comments = "", ""
    if pending or comments.strip():
        commands.append((pending, comments))
    return commands


class DocChecker:
    """What a document names that does not exist: `problems(text, path)`."""

    def __init__(self):
        self.options = project_options()
        self.targets = makefile_targets()
        self.any_project_option = set().union(*self.options.values())
        self.any_other_option = set().union(*OTHER_PROGRAMS.values())

    def problems(self, text: str, path: Path) -> list[str]:
        blocks, prose = code_blocks(text)
        found = self.path_problems(text) + self.dotted_problems(text) + self.link_problems(text, path)
        for language, block in blocks:
            if language in ("python", "json"):
                continue
            for command, comment in shell_commands(block):
                found += self.command_problems(command) + self.bare_flag_problems(comment)
        for _, span in CODE_SPAN.findall(prose):
            found += self.command_problems(span)
        found += self.bare_flag_problems(CODE_SPAN.sub(" ", prose))
        return [f"{path.relative_to(REPO)}: {problem}" for problem in dict.fromkeys(found)]

    def path_problems(self, text: str) -> list[str]:
        problems = []
        for candidate in PATH.findall(text):
            if any(mark in candidate for mark in "<>*{}") or "..." in candidate:
                continue  # a placeholder, not a path
            relative = candidate.rstrip("/.")
            if relative.split("/")[0] not in tracked_roots() or is_ignored(relative):
                continue  # not in the repository: a run's output, another project's file
            if not (REPO / relative).exists():
                problems.append(f"path {candidate} does not exist")
        return problems

    def dotted_problems(self, text: str) -> list[str]:
        problems = []
        for name in DOTTED.findall(text):
            found = module_of(name.split("."))
            if found is None:
                problems.append(f"{name}: no such module")
                continue
            module, attributes = found
            if attributes and attributes[0] not in top_level_names(module):
                problems.append(f"{name}: {module.relative_to(REPO)} defines no {attributes[0]}")
        return problems

    def link_problems(self, text: str, path: Path) -> list[str]:
        problems = []
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue  # a URL
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                problems.append(f"link {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
                problems.append(f"link {target}: {linked.name} has no heading #{anchor}")
        return problems

    def command_problems(self, command: str, program: str | None = None) -> list[str]:
        """Make targets that do not exist and flags the command they are given to does not take."""
        try:
            tokens = shlex.split(command)
        except ValueError:
            tokens = command.split()
        problems, make_target = [], None
        for i, token in enumerate(tokens):
            if token in SHELL_SEPARATORS:
                program, make_target = None, None
                continue
            started = command_of(token if token != "-m" else " ".join(tokens[i:i + 2]))
            if started is not None:
                program = started
                continue
            if i and tokens[i - 1] == "-m":
                continue  # the module itself, named by the -m above
            if i and tokens[i - 1] == "make" and not token.startswith("-") and "=" not in token:
                if token not in self.targets:
                    problems.append(f"make target {token} is not in the Makefile")
                make_target, program = token, self.targets.get(token)
                continue
            variable, equals, value = token.partition("=")
            if equals and re.fullmatch(r"[A-Z][A-Z0-9_]*", variable):
                if variable in MAKE_FLAG_VARIABLES and make_target is not None:
                    owner = MAKE_FLAG_VARIABLES[variable] or program
                    problems += self.flag_problems(FLAG.findall(value), owner)
                else:  # a variable holding a command of its own (HPU_RUN="torchrun ...") or a plain value
                    problems += self.command_problems(value)
                continue
            problems += self.flag_problems(FLAG.findall(token), program)
        return problems

    def flag_problems(self, flags: list[str], program: str | None) -> list[str]:
        if program is None:
            return self.bare_flag_problems(" ".join(flags))
        known = self.options.get(program, OTHER_PROGRAMS.get(program))
        if known is None:
            return [f"{' '.join(flags)}: flags of {program}, which is neither a project command nor in "
                    "OTHER_PROGRAMS"] if flags else []
        return [f"{flag} is not an option of {program}" for flag in flags if flag not in known]

    def bare_flag_problems(self, text: str) -> list[str]:
        """A flag named outside a command: it must be some project command's (or an OTHER_PROGRAMS one)."""
        return [f"{flag} is an option of no project command" for flag in FLAG.findall(text)
                if flag not in self.any_project_option | self.any_other_option]


def module_of(parts: list[str]) -> tuple[Path, list[str]] | None:
    """The source file of the longest module a dotted name starts with, and the names after it."""
    for length in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:length])
        for source in (base.with_suffix(".py"), base / "__init__.py"):
            if source.is_file():
                return source, parts[length:]
    return None


@cache
def top_level_names(module: Path) -> frozenset[str]:
    """Names a module defines or imports at its top level, and its submodules when it is a package."""
    names = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for target in node.targets for t in ast.walk(target) if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    if module.name == "__init__.py":
        names.update(p.stem for p in module.parent.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists())
    return frozenset(names)


@pytest.fixture(scope="module")
def checker() -> DocChecker:
    return DocChecker()


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_document_names_only_what_exists(checker, document):
    assert checker.problems(document.read_text(), document) == []


def test_the_readme_is_short_and_starts_with_the_first_two_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    first_screen = "\n".join(lines[:40])
    assert "make demo" in first_screen and "make test" in first_screen


def test_every_docs_page_is_linked_from_the_readme():
    linked = {Path(target.partition("#")[0]).name for target in LINK.findall((REPO / "README.md").read_text())}
    assert {page.name for page in (REPO / "docs").glob("*.md")} <= linked


def test_a_missing_path_link_anchor_name_target_or_flag_is_named(checker):
    """The check can fail: each thing a rename leaves behind is caught, in prose, in code and in make's ARGS."""
    document = """
See `detr_ft/model/no_such_module.py` and [the guide](docs/no-such-page.md), [runs](docs/runs.md#no-such-heading).
`detr_ft.data.validation.no_such_function` and `detr_ft.no_such_package.thing`.

```bash
make no-such-target OUTDIR=outputs/x
python run_object_detection.py recipes/cppe5-r50.json --no_such_flag 1
make infer ARGS="--num_buckets 1"   # the entry's flag, given to inference
scripts/gpu_check.sh --huge
```

In prose, `--no_such_option` and --another_missing_one.
"""
    problems = checker.problems(document, REPO / "README.md")
    expected = ["path detr_ft/model/no_such_module.py", "path docs/no-such-page.md", "link docs/no-such-page.md",
                "no heading #no-such-heading",
                "no_such_function", "defines no no_such_package",
                "make target no-such-target", "--no_such_flag is not an option of entry",
                "--num_buckets is not an option of inference", "--huge is not an option of gpu_check",
                "--no_such_option is an option of no project command",
                "--another_missing_one is an option of no project command"]
    for fragment in expected:
        assert any(fragment in problem for problem in problems), (fragment, problems)
    assert len(problems) == len(expected), problems


def test_what_exists_passes_in_every_form(checker):
    """The same forms naming what exists give no problem: flags go to the command they are given to."""
    document = """
`detr_ft/data/canvases.py`, `patches/__init__.py`, `tests/test_flags.py::test_x`, `recipes/cppe5-r50.json`,
[runs](docs/runs.md#exit-codes), `detr_ft.data.validation.validate_split`, `patches.apply_patches`.
Output files are not repository paths: `outputs/cppe5/checkpoint-800`, `data/cppe5/images/`, `run_summary.json`.

```bash
make eval-all-checkpoints OUTDIR=outputs/x ARGS="--split test --redo"
make bench BENCH_ARGS=--quick
make train-hpu-hf HPU_RUN="torchrun --nproc_per_node 8"
torchrun --nproc_per_node 2 run_object_detection.py recipes/demo-tiny.json --ddp_backend gloo
python -m detr_ft.evaluation.inference --model_path m --output_dir o \\
    --images_dir photos --threshold 0.3
CHECKS="1 6" scripts/gpu_check.sh --tiny   # --pad_images in a comment is a project flag
```

    python gaudi_spawn.py --world_size 8 --use_mpi run_object_detection.py --use_habana --use_lazy_mode

`--pad_images --image_size 800` in prose; `--redo` (eval_checkpoints') and `--url` (cppe5_download's) too.
"""
    assert checker.problems(document, REPO / "README.md") == []
