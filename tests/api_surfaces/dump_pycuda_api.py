"""Record the Python API surface of ``pycuda.driver`` from pycuda's source as JSON test data.

Usage (from the repository root)::

    python tests/api_surfaces/dump_pycuda_api.py pycuda==2026.1 [--cuda 11.8]

pycuda ships as an sdist that compiles against the CUDA toolkit, so the surface is read from its source instead of
an import: the script pip-downloads the sdist (no build, no dependencies), reads the Boost.Python module definition
``src/wrapper/wrap_cudadrv.cpp`` (``pycuda._driver``) with the C++ it wraps (``src/cpp/cuda.hpp``) and the Python
module over it (``pycuda/driver.py``: ``from pycuda._driver import *`` plus its own functions and the methods
``_add_functionality`` attaches), and writes ``tests/api_surfaces/pycuda-<version>.json``:

- every module-level function, class, enum and exception, with the module that defines it;
- each class's methods (static or not), properties (writable or not) and constructors;
- each callable's parameters after ``self``: the C++ name, whether Python may pass it by keyword (Boost.Python
  takes keywords only where the wrapper declares ``py::arg``/``py::args``; they name the last parameters), and
  whether it is optional (a declared default, ``py::optional<...>``), with the default as written in C++.
Preprocessor conditions are evaluated as for a build against CUDA ``--cuda`` (default 11.8, the oldest CUDA of a
setup the CUDA layer supports), without GL or cuRAND.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")


# --- reading the sources --------------------------------------------------------------------------------------
def download_sdist(spec: str, workdir: Path) -> Path:
    """pip-download the sdist for ``spec`` (no build; a path to a downloaded one is taken as it is) and unpack it;
    its top folder."""
    if Path(spec).is_file():
        sdist = Path(spec)
    else:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-binary", ":all:", "-d", str(workdir), spec], check=True)
        (sdist,) = workdir.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(workdir, filter="data")
    (top,) = [path for path in workdir.iterdir() if path.is_dir()]
    return top


def preprocess(text: str, cuda_version: int) -> str:
    """The lines a build keeps: comments dropped, ``#if``/``#ifdef``/``#elif``/``#else`` evaluated for this CUDA."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"\\\n", " ", text)
    defined = {"CUDAPP_POST_30_BETA"}
    values = {"CUDAPP_CUDA_VERSION": cuda_version, "CUDA_VERSION": cuda_version, "PY_VERSION_HEX": 0x030B0000,
              "NPY_ABI_VERSION": 0x02000000}

    def holds(condition: str) -> bool:
        condition = re.sub(r"defined\s*\(\s*(\w+)\s*\)", lambda match: str(int(match[1] in defined)), condition)
        condition = condition.replace("&&", " and ").replace("||", " or ").replace("!", " not ")
        condition = condition.replace(" not =", "!=")
        condition = _IDENTIFIER.sub(lambda match: match[0] if match[0] in ("and", "or", "not")
                                    else str(values.get(match[0], 0)), condition)
        return bool(eval(condition, {"__builtins__": {}}))  # noqa: S307 - integers and operators only

    kept, stack = [], []  # stack: (this branch is live, a branch of this #if was taken)
    for line in text.splitlines():
        directive = re.match(r"\s*#\s*(\w+)\s*(.*)", line)
        live = all(branch for branch, _ in stack)
        if not directive or directive[1] not in ("if", "ifdef", "ifndef", "elif", "else", "endif"):
            if live and not (directive and directive[1] in ("define", "include", "error", "warning", "undef",
                                                            "pragma")):
                kept.append(line)
            continue
        word, rest = directive[1], directive[2]
        if word in ("if", "ifdef", "ifndef"):
            taken = (holds(rest) if word == "if" else (rest.strip() in defined) == (word == "ifdef"))
            stack.append((taken, taken))
        elif word == "elif":
            _, done = stack.pop()
            taken = not done and holds(rest)
            stack.append((taken, done or taken))
        elif word == "else":
            _, done = stack.pop()
            stack.append((not done, True))
        else:
            stack.pop()
    return "\n".join(kept)


def closing(text: str, start: int, pairs: str = "()") -> int:
    """Index of the bracket that closes the one at ``start``."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == pairs[0]:
            depth += 1
        elif text[index] == pairs[1]:
            depth -= 1
            if depth == 0:
                return index
    raise ValueError(f"unbalanced {pairs} from {start}")


def split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "(<[{":
            depth += 1
        elif char in ")>]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [part for part in [*parts, current.strip()] if part]


# --- C++ declarations -----------------------------------------------------------------------------------------
class Cpp:
    """Function and method declarations in the preprocessed C++ sources."""

    def __init__(self, *sources: str) -> None:
        self.text = "\n".join(sources)

    def class_body(self, name: str) -> str:
        match = re.search(rf"\b(?:class|struct)\s+{re.escape(name)}\b[^;{{]*\{{", self.text)
        if match is None:
            return ""
        return self.text[match.end() - 1:closing(self.text, match.end() - 1, "{}") + 1]

    def base_classes(self, name: str) -> list[str]:
        match = re.search(rf"\b(?:class|struct)\s+{re.escape(name)}\b\s*:([^{{;]*)\{{", self.text)
        if match is None:
            return []
        return [part.split()[-1].split("::")[-1] for part in split_top_level(match[1])]

    def parameters(self, name: str, within: str | None = None) -> tuple[list[dict[str, Any]], bool] | None:
        """(parameters, static) of the first declaration of ``name`` with a body or ending in ``;``, looked up in the
        class ``within`` (then its bases, then ``Class::name`` outside it), or as a free function."""
        scopes = []
        if within is not None:
            pending = [within]
            while pending:
                current = pending.pop(0)
                scopes.append((self.class_body(current), current))
                pending += self.base_classes(current)
        scopes.append((self.text, None))
        pattern = (r"operator\s+CUdeviceptr" if name == "operator CUdeviceptr" else re.escape(name))
        for body, owner in scopes:
            qualified = rf"(?:\b{re.escape(owner)}::)?" if owner and body is self.text else ""
            for match in re.finditer(rf"(?:^|[\s\*&>]){qualified}{pattern}\s*(?:<[^;{{()]*>)?\s*\(", body, re.M):
                open_paren = match.end() - 1
                close = closing(body, open_paren)
                after = body[close + 1:close + 80].lstrip()
                line_start = body.rfind("\n", 0, match.start()) + 1
                before = body[line_start:match.start() + 1].strip()
                if not before and not name.startswith("operator"):  # the return type may be on the line above
                    before = body[:line_start].rstrip().rsplit("\n", 1)[-1].strip()
                    before = "" if before.endswith((";", "{", "}", ")")) else before
                declared = bool(before) or name.startswith("operator")
                if not re.match(r"(const\s*)?(\{|;|:)", after) or not declared or before.endswith(("=", "return",
                                                                                                    ",", "(")):
                    continue  # a call, not a declaration
                static = before.startswith("static") or "static " in before
                return [_cpp_parameter(part) for part in split_top_level(body[open_paren + 1:close])
                        if part != "void"], static
        return None


_TYPE_WORDS = {"unsigned", "signed", "int", "long", "short", "char", "float", "double", "bool", "const", "size_t"}


def _cpp_parameter(text: str) -> dict[str, Any]:
    declaration, _, default = text.partition("=")
    words = _IDENTIFIER.findall(declaration)
    named = (len(words) > 1 and words[-1] not in _TYPE_WORDS
             and not declaration.rstrip().endswith((">", "*", "&")))
    return {"name": words[-1] if named else None, "keyword": False, "optional": bool(default),
            "default": default.strip() or None}


# --- the Boost.Python module definition -----------------------------------------------------------------------
def keywords(extras: list[str]) -> list[tuple[str, str | None]]:
    """The (name, default) pairs that ``py::arg``/``py::args`` declare in a ``def``'s extra arguments."""
    declared = []
    for extra in extras:
        for match in re.finditer(r"py::args?\s*\(([^()]*)\)\s*(?:=\s*([^,()]+(?:\([^()]*\))?))?", extra):
            names = re.findall(r'"(\w+)"', match[1])
            for index, name in enumerate(names):
                declared.append((name, match[2].strip() if match[2] and index == len(names) - 1 else None))
    return declared


def apply_keywords(parameters: list[dict[str, Any]], declared: list[tuple[str, str | None]],
                   includes_self: bool) -> list[dict[str, Any]]:
    """Boost.Python's keywords name the last parameters (``self`` first when it is declared too)."""
    if declared and includes_self and declared[0][0] == "self":
        declared = declared[1:]
    for parameter, (name, default) in zip(parameters[len(parameters) - len(declared):], declared):
        parameter.update(name=name, keyword=True)
        if default is not None:
            parameter.update(optional=True, default=default)
    return parameters


class Module:
    def __init__(self, wrapper: str, cpp: Cpp) -> None:
        self.cpp = cpp
        body_start = wrapper.index("{", wrapper.index("BOOST_PYTHON_MODULE(_driver)"))
        self.body = wrapper[body_start + 1:closing(wrapper, body_start, "{}")]
        self.members: dict[str, dict[str, Any]] = {}
        self.holders: dict[str, str] = {}  # a class_ object's C++ variable -> its Python name
        self.cpp_names: dict[str | None, str] = {}  # C++ class -> Python name

    def read(self) -> dict[str, dict[str, Any]]:
        body = self.body
        for match in re.finditer(r"DECLARE_EXC\((\w+),\s*([^)]*?)\)", body):
            self.members[match[1]] = {"kind": "exception", "bases": ["Error"] if "CudaError" in match[2] else []}
        for statement in self.statements(body):
            self.read_statement(statement)
        return self.members

    @staticmethod
    def statements(body: str) -> list[tuple[str | None, str]]:
        """(the C++ class ``cl`` names there, statement) for each top-level statement of the module body."""
        found, typedef = [], None
        position = 0
        while position < len(body):
            char = body[position]
            if char.isspace():
                position += 1
                continue
            if char in "{}":
                typedef = None if char == "}" else typedef
                position += 1
                continue
            end, depth = position, 0
            while end < len(body) and not (body[end] == ";" and depth == 0):
                depth += body[end] in "(" and 1 or body[end] in ")" and -1 or 0
                end += 1
            statement = body[position:end].strip()
            position = end + 1
            cl = re.fullmatch(r"typedef\s+(.+?)\s+cl", statement)
            if cl:
                typedef = cl[1].split("::")[-1]
            elif statement:
                found.append((typedef, statement))
        return found

    def read_statement(self, statement: tuple[str | None, str]) -> None:
        cl, text = statement
        function = re.match(r"(?:py|boost::python)::def\s*\(\s*\"(\w+)\"\s*,\s*", text)
        simple = re.match(r"DEF_SIMPLE_FUNCTION(?:_WITH_ARGS)?\s*\(\s*(\w+)\s*(?:,(.*))?\)$", text, re.S)
        if function:
            arguments = split_top_level(text[function.end() - 1:closing(text, text.index("(")) + 0])
            target, extras = arguments[0], arguments[1:]
            self.members[function[1]] = {"kind": "function",
                                         "params": self.callable_parameters(target, extras, None, False)}
        elif simple:
            extras = [f"py::args{simple[2]}"] if simple[2] else []
            self.members[simple[1]] = {"kind": "function",
                                       "params": self.callable_parameters(simple[1], extras, None, False)}
        elif re.match(r"py::enum_<", text):
            name = re.search(r'\(\s*"(\w+)"', text)[1]
            self.members[name] = {"kind": "enum", "values": sorted(re.findall(r'\.value\s*\(\s*"(\w+)"', text))}
        elif re.match(r"py::class_<", text):
            self.read_class(cl, text)
        elif re.match(r"\w+\.attr\s*\(", text):  # cls.attr("NAME") = value, on a class made before
            holder, name = re.match(r'(\w+)\.attr\s*\(\s*"(\w+)"', text).groups()
            self.members[self.holders[holder]]["members"][name] = {"kind": "value"}
        elif re.match(r"\w+\s*\.", text):  # wrp.def(...)... on a class made before
            holder = text.split(".")[0].strip()
            self.read_methods(self.holders[holder], cl, text[len(holder):])
        constant = re.match(r'py::scope\(\)\.attr\("(\w+)"\)\s*=\s*(\w+)', text)
        if constant:  # a module constant, or a second name of a class
            self.members[constant[1]] = ({"kind": "alias", "of": self.holders[constant[2]]}
                                         if constant[2] in self.holders else {"kind": "value"})

    def read_class(self, cl: str | None, text: str) -> None:
        template_end = closing(text, text.index("<"), "<>")
        bases = re.findall(r"py::bases<\s*(\w+)\s*>", text[:template_end])
        rest = text[template_end + 1:].lstrip()
        holder = re.match(r"(\w+)\s*\(", rest)
        if holder:
            rest = rest[holder.end() - 1:]
        open_paren = rest.index("(")
        constructor = split_top_level(rest[open_paren + 1:closing(rest, open_paren)])
        name = constructor[0].strip('"')
        python_bases = [self.class_name(base) for base in bases]
        self.members[name] = {"kind": "class", "bases": python_bases, "members": {}}
        self.cpp_names[cl] = name
        if holder:
            self.holders[holder[1]] = name
        if len(constructor) > 1 and "no_init" not in constructor[1]:
            self.add_init(name, cl, constructor[1])
        elif len(constructor) == 1:
            self.members[name]["members"]["__init__"] = {"kind": "method", "params": []}
        self.read_methods(name, cl, rest[closing(rest, open_paren) + 1:])

    def class_name(self, cpp_name: str) -> str:
        return self.cpp_names.get(cpp_name, cpp_name)

    def add_init(self, name: str, cl: str | None, init: str) -> None:
        match = re.match(r"py::init\s*<(.*?)>\s*\((.*)\)\s*$", init.strip(), re.S)
        if match is None:
            return
        types = split_top_level(match[1])
        parameters = []
        for type_ in types:
            optional = re.match(r"py::optional\s*<(.*)>$", type_.strip(), re.S)
            for inner in split_top_level(optional[1]) if optional else [type_]:
                parameters.append({"name": None, "keyword": False, "optional": bool(optional), "default": None})
        apply_keywords(parameters, keywords([match[2]]), includes_self=False)
        self.members[name]["members"].setdefault("__init__", {"kind": "method", "signatures": []})
        self.members[name]["members"]["__init__"].setdefault("signatures", []).append(parameters)

    def read_methods(self, name: str, cl: str | None, chain: str) -> None:
        members = self.members[name]["members"]
        position = 0
        while True:
            call = re.compile(r"\.\s*(\w+)\s*\(").search(chain, position)
            if call is None:
                return
            close = closing(chain, call.end() - 1)
            arguments = split_top_level(chain[call.end():close])
            position = close + 1
            method = call[1]
            if method in ("DEF_SIMPLE_METHOD", "DEF_SIMPLE_METHOD_WITH_ARGS"):
                extras = [f"py::args{arguments[1]}"] if len(arguments) > 1 else []
                members[arguments[0]] = {"kind": "method",
                                         "params": self.callable_parameters(f"&cl::{arguments[0]}", extras, cl, True)}
            elif method == "def" and arguments and arguments[0].startswith("py::init"):
                self.add_init(name, cl, arguments[0])
            elif method == "def" and arguments and arguments[0].startswith('"'):
                python_name, target, extras = arguments[0].strip('"'), arguments[1], arguments[2:]
                if python_name == "__init__":
                    factory = re.match(r"py::make_constructor\s*\(\s*(\w+)", target)
                    found = self.cpp.parameters(factory[1]) if factory else None
                    signature = found[0] if found else None
                    members.setdefault("__init__", {"kind": "method", "signatures": []})["signatures"].append(
                        signature)
                else:
                    members[python_name] = {"kind": "method",
                                            "params": self.callable_parameters(target, extras, cl, True)}
            elif method == "staticmethod":
                members[arguments[0].strip('"')]["kind"] = "staticmethod"
            elif method in ("add_property", "def_readonly", "def_readwrite"):
                members[arguments[0].strip('"')] = {
                    "kind": "property", "writable": method == "def_readwrite" or len(arguments) > 2}
            elif method == "value":
                members[arguments[0].strip('"')] = {"kind": "value"}

    def callable_parameters(self, target: str, extras: list[str], cl: str | None,
                            method: bool) -> list[dict[str, Any]] | None:
        """Parameters after ``self`` of what a ``def`` wraps, with Boost.Python's keywords applied; None when the
        C++ declaration is not found."""
        target = re.sub(r"py::pure_virtual\s*\((.*)\)$", r"\1", target.strip())
        cast = re.match(r"\(\s*[^()]*\(\s*(\w+::)?\*\s*\)\s*\((.*?)\)\s*\)\s*(.*)$", target, re.S)
        static_member = False
        if cast:  # (result (*)(args)) &cl::name, or (result (cl::*)(args)): the cast's parameter types
            parameters = [_cpp_parameter(part) for part in split_top_level(cast[2]) if part != "void"]
            static_member = cast[1] is None
        else:
            member = re.match(r"&\s*(\w+)::(.+)$", target)
            owner = (cl if member[1] == "cl" else member[1]) if member else None
            name = (member[2] if member else re.sub(r"<.*>$", "", target.lstrip("&")).split("::")[-1]).strip()
            found = self.cpp.parameters(name, owner)
            if found is None:
                return None
            parameters, static_member = found
            static_member = static_member or not member
        if method and static_member and parameters:
            parameters = parameters[1:]  # a free function wrapped as a method takes self first
        return apply_keywords([dict(parameter) for parameter in parameters], keywords(extras), includes_self=method)


# --- pycuda/driver.py -----------------------------------------------------------------------------------------
def python_parameters(function: ast.FunctionDef, method: bool) -> list[dict[str, Any]]:
    arguments = function.args
    positional = [*arguments.posonlyargs, *arguments.args][1 if method else 0:]
    defaults = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
    found = [{"name": argument.arg, "keyword": argument not in arguments.posonlyargs, "optional": default is not None,
              "default": ast.unparse(default) if default is not None else None}
             for argument, default in zip(positional, defaults)]
    if arguments.vararg:
        found.append({"name": "*" + arguments.vararg.arg, "keyword": False, "optional": True, "default": None})
    found += [{"name": argument.arg, "keyword": True, "optional": default is not None,
               "default": ast.unparse(default) if default is not None else None}
              for argument, default in zip(arguments.kwonlyargs, arguments.kw_defaults)]
    if arguments.kwarg:
        found.append({"name": "**" + arguments.kwarg.arg, "keyword": True, "optional": True, "default": None})
    return found


def read_python(source: str, members: dict[str, dict[str, Any]]) -> None:
    """What pycuda/driver.py adds: its module-level functions and classes, and the methods it attaches."""
    tree = ast.parse(source)
    local_functions: dict[str, ast.FunctionDef] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            local_functions.setdefault(node.name, node)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            members[node.name] = {"kind": "function", "module": "pycuda.driver",
                                  "params": python_parameters(node, method=False)}
        elif isinstance(node, ast.ClassDef):
            methods = {item.name: {"kind": "method", "params": python_parameters(item, method=True)}
                       for item in node.body if isinstance(item, ast.FunctionDef)}
            bases = [ast.unparse(base) for base in node.bases]
            exception = any(members.get(base, {}).get("kind") == "exception" for base in bases)
            members[node.name] = {"kind": "exception" if exception else "class", "module": "pycuda.driver",
                                  "bases": bases, **({} if exception else {"members": methods})}
    for node in ast.walk(tree):  # Class.name = function, inside _add_functionality
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Attribute)
                and isinstance(node.targets[0].value, ast.Name) and isinstance(node.value, ast.Name)
                and members.get(node.targets[0].value.id, {}).get("kind") == "class"
                and node.value.id in local_functions):
            owner, name = node.targets[0].value.id, node.targets[0].attr
            members[owner]["members"][name] = {"kind": "method", "module": "pycuda.driver",
                                               "params": python_parameters(local_functions[node.value.id], True)}


def dump(spec: str, cuda: str) -> Path:
    major, minor = (int(part) for part in cuda.split("."))
    with tempfile.TemporaryDirectory() as temporary:
        top = download_sdist(spec, Path(temporary))
        version = top.name.split("-", 1)[1]
        cuda_version = major * 1000 + minor * 10
        wrapper = preprocess((top / "src" / "wrapper" / "wrap_cudadrv.cpp").read_text(), cuda_version)
        members = Module(wrapper, Cpp(preprocess((top / "src" / "cpp" / "cuda.hpp").read_text(), cuda_version),
                                      wrapper)).read()
        read_python((top / "pycuda" / "driver.py").read_text(), members)
    out = OUT_DIR / f"pycuda-{version}.json"
    surface = {"module": "pycuda.driver", "version": version, "cuda": cuda,
               "source": f"pycuda-{version}.tar.gz: src/wrapper/wrap_cudadrv.cpp, src/cpp/cuda.hpp, pycuda/driver.py",
               "members": dict(sorted(members.items()))}
    out.write_text(json.dumps(surface, indent=1, sort_keys=True) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+", help="pip requirements of pycuda sdists (pycuda==2026.1), or sdist paths")
    parser.add_argument("--cuda", default="11.8", help="the CUDA version the preprocessor conditions assume")
    arguments = parser.parse_args(argv)
    for spec in arguments.specs:
        print(dump(spec, arguments.cuda))
    return 0


if __name__ == "__main__":
    sys.exit(main())
