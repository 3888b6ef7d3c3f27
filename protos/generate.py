"""Generate the Python stubs of `protos/` into `common/protos/` (committed; a test regenerates).

    python protos/generate.py            # write the stubs
    python protos/generate.py --check    # exit 1 if the committed stubs differ from a fresh run

grpcio-tools writes `from atoll.node.v1 import runtime_pb2`, the proto package path; our stubs
live under `common.protos`, so that one import line is rewritten. Nothing else is touched.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
OUT = ROOT / "common" / "protos"
PACKAGE = "common.protos"


def _init_files(out: Path) -> dict[Path, str]:
    """`__init__.py` for every generated directory (a docstring only)."""
    files: dict[Path, str] = {}
    for directory in sorted({p.parent for p in out.rglob("*.py*")} | {out}):
        d = directory
        while d != out.parent and d.is_relative_to(out):
            files[d / "__init__.py"] = '"""Generated from protos/ by protos/generate.py."""\n'
            d = d.parent
    return files


def generate(out: Path) -> dict[Path, bytes]:
    """Compile every .proto under protos/ into `out`; return {relative path: content}."""
    from grpc_tools import protoc  # dev dependency only

    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: see the message above")
    result: dict[Path, bytes] = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".pyi"):
            text = path.read_text()
            for proto in sources:
                module = proto.removesuffix(".proto").replace("/", ".")
                pkg, _, name = module.rpartition(".")
                text = text.replace(
                    f"from {pkg} import {name}_pb2", f"from {PACKAGE}.{pkg} import {name}_pb2"
                )
            result[path.relative_to(out)] = text.encode()
    for path, text in _init_files(out).items():
        result[path.relative_to(out)] = text.encode()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    if check:
        committed = {
            p.relative_to(OUT): p.read_bytes()
            for p in OUT.rglob("*")
            if p.is_file() and p.suffix in (".py", ".pyi")
        }
        if committed != fresh:
            differ = sorted(str(p) for p in set(committed) ^ set(fresh)) + sorted(
                str(p) for p in set(committed) & set(fresh) if committed[p] != fresh[p]
            )
            print("stale stubs in common/protos: " + ", ".join(differ), file=sys.stderr)
            print("run `python protos/generate.py` and commit the result", file=sys.stderr)
            return 1
        return 0
    for rel, content in fresh.items():
        target = OUT / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
