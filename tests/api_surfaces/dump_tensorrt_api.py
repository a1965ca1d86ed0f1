"""Record the real Python API surface of NVIDIA's TensorRT bindings as JSON test data.

Usage (from the repository root)::

    python tests/api_surfaces/dump_tensorrt_api.py tensorrt-cu12-bindings==10.3.0 [SPEC ...]

Each SPEC is a pip requirement naming a TensorRT *bindings* wheel
(``tensorrt-bindings==8.6.1``, ``tensorrt-cu12-bindings==11.4.0.106``,
``tensorrt-rtx-cu13-bindings==1.7.1.116`` ...). For each one the script pip-downloads
the wheel (no dependencies) into a temporary directory, unpacks it, adds the two-line
frontend package that ``pip install tensorrt`` / ``tensorrt-rtx`` would provide
(``from tensorrt_bindings import *``), imports it in a subprocess and writes
``tests/api_surfaces/<module>-<version>.json``: every public module-level name with its
kind, enum values (and the name an alias prints as), class bases, method/constructor
signatures (from the pybind11 docstrings), properties with their getter and setter
signatures (so whether they are writable and which type a write takes), plus what
``nptype`` returns for each ``DataType``.

Why stubs: the bindings wheel holds only ``tensorrt.so``, a pybind11 module linked
against ``libnvinfer.so.N``, ``libnvonnxparser.so.N``, ... from the multi-GB ``-libs``
wheels (which need a GPU driver stack anyway). The extension only imports a handful of
C-linkage factory functions from those libraries (class methods go through vtables), so
the script compiles tiny stand-in libraries with the same SONAMEs that export those
symbols as functions returning NULL and drops them next to the extension (its RPATH
starts with ``$ORIGIN``). Nothing is ever called -- the module is only introspected --
so no GPU, CUDA or TensorRT installation is needed; gcc and binutils (``nm``,
``readelf``) are.
"""

from __future__ import annotations

import ctypes
import enum
import inspect
import json
import re
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent
# Libraries the system provides; everything else in DT_NEEDED gets a stub.
SYSTEM_LIB = re.compile(r"^(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux[\w-]*)\.so")


def download_and_unpack(spec: str, workdir: Path) -> Path:
    """pip-download the wheel for ``spec`` and unpack it; return the unpack directory."""
    wheels = workdir / "wheels"
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    cmd = [*pip, "-d", str(wheels), spec]
    subprocess.run(cmd, check=True)
    (wheel,) = wheels.glob("*.whl")
    site = workdir / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def find_extension(site: Path) -> Path:
    """The pybind11 extension: ``<pkg>_bindings/<module>.so`` (e.g. tensorrt_bindings/tensorrt.so)."""
    (ext,) = [p for p in site.glob("*/*.so") if (p.parent / "__init__.py").exists()]
    return ext


def needed_and_undefined(ext: Path) -> tuple[list[str], list[str]]:
    """DT_NEEDED entries that need stubs, and undefined symbols nothing on the system provides."""
    dyn = subprocess.run(["readelf", "-d", str(ext)], check=True, capture_output=True, text=True).stdout
    needed = [n for n in re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dyn) if not SYSTEM_LIB.match(n)]
    nm = subprocess.run(["nm", "-D", "--undefined-only", str(ext)], check=True, capture_output=True, text=True).stdout
    process = ctypes.CDLL(None)  # libc, libdl, libm and the Python C API are already loaded here
    symbols = []
    for line in nm.splitlines():
        kind, name = line.split()[-2:]
        if kind != "U" or "@" in name or name.startswith(("Py", "_Py")) or hasattr(process, name):
            continue  # weak, versioned (GLIBC/GLIBCXX/CXXABI/GCC) or already resolvable
        symbols.append(name)
    return needed, sorted(symbols)


def build_stubs(ext: Path, workdir: Path) -> list[str]:
    """Compile one stub library per missing SONAME next to ``ext``; return the SONAMEs."""
    needed, symbols = needed_and_undefined(ext)
    src = workdir / "stub.c"
    # __asm__ labels let C define C++-mangled names too (e.g. nvuffparser::createUffParser in 8.6).
    stub = 'void *stub{0}(void) __asm__("{1}");\nvoid *stub{0}(void) {{ return 0; }}\n'
    src.write_text("".join(stub.format(i, s) for i, s in enumerate(symbols)))
    for soname in needed:
        cmd = ["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(ext.parent / soname), str(src)]
        subprocess.run(cmd, check=True)
    return needed


def doc_signatures(obj: Any, name: str) -> list[str]:
    """Signatures from a pybind11 docstring ("name(sig) -> ret", or numbered overloads), minus the name."""
    name = getattr(obj, "__name__", name)
    lines = (getattr(obj, "__doc__", None) or "").splitlines()
    if any(line.strip() == "Overloaded function." for line in lines[:3]):
        pattern = re.compile(rf"^\d+\. {re.escape(name)}(\(.*)$")
    else:
        pattern, lines = re.compile(rf"^{re.escape(name)}(\(.*)$"), lines[:1]
    return [m.group(1) for m in map(pattern.match, lines) if m]


def signatures(obj: Any, name: str) -> list[str]:
    """str(inspect.signature) for Python functions, the pybind11 docstring otherwise."""
    if isinstance(obj, (types.FunctionType, types.MethodType)):
        return [str(inspect.signature(obj))]
    return doc_signatures(obj, name)


def accessor_signatures(prop: property) -> dict[str, list[str]]:
    """The getter's and setter's pybind11 signatures ("(arg0: X, arg1: tensorrt.DeviceType) -> None"): the type a
    property gives and the values a write takes (pybind11 rejects an int for an enum, a float for an int)."""
    accessors = {"getter": prop.fget, "setter": prop.fset}
    return {key: signatures(function, "") for key, function in accessors.items() if function is not None}


def type_name(cls: type, module: str) -> str:
    """Qualified name for classes of the extension (tensorrt_bindings.tensorrt), dotted path otherwise."""
    if cls.__module__ == module or cls.__module__.endswith("." + module):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def is_enum(cls: type) -> bool:
    return issubclass(cls, enum.Enum) or isinstance(getattr(cls, "__members__", None), dict)


def describe_type(cls: type, module: str, depth: int = 0) -> dict[str, Any]:
    if is_enum(cls):
        values = {k: int(v.value if isinstance(v, enum.Enum) else v) for k, v in cls.__members__.items()}
        # A member sharing another's value prints under the name defined first (BuilderFlag.STRIP_PLAN.name is
        # "WEIGHTLESS" in 10.3), which the sorted values cannot tell.
        aliases = {k: v.name for k, v in cls.__members__.items() if isinstance(v.name, str) and v.name != k}
        return {"kind": "enum", "values": values, **({"aliases": aliases} if aliases else {})}
    members: dict[str, Any] = {}
    for name in dir(cls):
        if name.startswith("_") and name != "__init__":
            continue  # dunders and pybind11 internals such as _pybind11_conduit_v1_
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, property):  # includes pybind11_static_property
            members[name] = {"kind": "property", "writable": raw.fset is not None, **accessor_signatures(raw)}
        elif isinstance(raw, (staticmethod, classmethod)):
            members[name] = {"kind": "static", "signatures": signatures(getattr(cls, name), name)}
        elif isinstance(raw, type):
            members[name] = describe_type(raw, module, depth + 1) if depth < 3 else {"kind": "class"}
        elif callable(raw):  # pybind instancemethod, Python function, slot wrapper
            members[name] = {"kind": "method", "signatures": signatures(getattr(cls, name), name)}
        else:
            members[name] = {"kind": "value", "type": type(raw).__name__}
    bases = [type_name(b, module) for b in cls.__bases__]
    return {"kind": "class", "bases": bases, "members": members}


def introspect(site: str, module: str) -> dict[str, Any]:
    """Runs in the subprocess: import ``module`` from ``site`` and describe it."""
    sys.path.insert(0, site)
    for pkg in Path(site).glob("*_bindings"):  # an empty stand-in for the -libs wheel, never a real one
        libs = pkg.name.replace("_bindings", "_libs")
        sys.modules[libs] = types.ModuleType(libs)
    import numpy as np

    mod = __import__(module)
    members: dict[str, Any] = {}
    for name in dir(mod):
        if name.startswith("_") and name != "__version__":
            continue
        obj = getattr(mod, name)
        if isinstance(obj, type):
            members[name] = describe_type(obj, module)
        elif callable(obj):
            members[name] = {"kind": "function", "signatures": signatures(obj, name)}
        else:
            members[name] = {"kind": "value", "type": type(obj).__name__}
    nptype: dict[str, str | None] = {}
    for name, member in mod.DataType.__members__.items():
        try:
            nptype[name] = np.dtype(mod.nptype(member)).name
        except TypeError:
            nptype[name] = None
    return {"module": module, "version": mod.__version__, "nptype": nptype, "members": members}


def dump(spec: str) -> Path:
    with tempfile.TemporaryDirectory(prefix="trt-api-") as tmp:
        workdir = Path(tmp)
        site = download_and_unpack(spec, workdir)
        ext = find_extension(site)
        build_stubs(ext, workdir)
        module = ext.name.split(".")[0]  # tensorrt / tensorrt_rtx
        frontend = site / module  # what the `tensorrt` / `tensorrt-rtx` sdist installs
        frontend.mkdir()
        bindings = ext.parent.name
        (frontend / "__init__.py").write_text(f"from {bindings} import *\nfrom {bindings} import __version__\n")
        cmd = [sys.executable, __file__, "--introspect", str(site), module]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=tmp).stdout
    data = json.loads(out)
    data["package"] = spec
    data["regenerate"] = f"python tests/api_surfaces/dump_tensorrt_api.py {spec}"
    path = OUT_DIR / f"{module}-{data['version']}.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def main(argv: list[str]) -> int:
    if argv[:1] == ["--introspect"]:
        json.dump(introspect(argv[1], argv[2]), sys.stdout)
        return 0
    if not argv or argv[0].startswith("-"):
        print("usage: python tests/api_surfaces/dump_tensorrt_api.py SPEC [SPEC ...]\n" + __doc__, file=sys.stderr)
        return 2
    for spec in argv:
        print(dump(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
