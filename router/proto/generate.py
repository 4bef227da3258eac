"""Regenerate the committed Python modules for tierserve.proto with grpc_tools.protoc.

    python -m router.proto.generate           # rewrite tierserve_pb2{,_grpc}.py and .pyi
    python -m router.proto.generate --check   # exit 1 if the committed files are stale

protoc pins its own version into the generated code: the message module refuses a
protobuf runtime older than the generator (or of another major version) and the service
module refuses an older grpcio. The messages only use the descriptor-builder API that
protobuf 5.x through 7.x share, so both pins are removed. Checked: the modules import and
serve with protobuf 5.26, 5.29, 6.31 and 7.36; the service module needs grpcio >= 1.64
(``add_registered_method_handlers``).
"""

from __future__ import annotations

import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent.parent
PROTO = PROTO_DIR / "tierserve.proto"
OUTPUTS = ("tierserve_pb2.py", "tierserve_pb2.pyi", "tierserve_pb2_grpc.py")

_PB2_PINS = (
    re.compile(r"^# Protobuf Python Version: .*\n", re.M),
    re.compile(r"^from google\.protobuf import runtime_version as _runtime_version\n", re.M),
    re.compile(r"^_runtime_version\.ValidateProtobufRuntimeVersion\(\n.*?^\)\n", re.M | re.S),
)
_GRPC_PIN = re.compile(r"^GRPC_GENERATED_VERSION = .*?^if _version_not_supported:\n.*?^    \)\n", re.M | re.S)


def generate() -> dict[str, str]:
    """Run protoc into a scratch directory; return each output's text, pins removed."""
    from grpc_tools import protoc
    include = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as out:
        args = ["protoc", f"-I{REPO_ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
                f"--grpc_python_out={out}", str(PROTO.relative_to(REPO_ROOT))]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")
        made = Path(out) / PROTO_DIR.relative_to(REPO_ROOT)
        return {name: unpin(name, (made / name).read_text()) for name in OUTPUTS}


def unpin(name: str, text: str) -> str:
    if name == "tierserve_pb2.py":
        for pin in _PB2_PINS:
            text = pin.sub("", text)
    elif name == "tierserve_pb2_grpc.py":
        text = _GRPC_PIN.sub("", text)
    return text


def stale_outputs() -> list[str]:
    """Names of committed outputs that differ from a fresh generation."""
    fresh = generate()
    return [n for n, text in fresh.items() if not (PROTO_DIR / n).is_file() or (PROTO_DIR / n).read_text() != text]


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = stale_outputs()
        print(f"stale: {', '.join(stale)}; run python -m router.proto.generate" if stale else "up to date")
        return 1 if stale else 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    for name, text in generate().items():
        (PROTO_DIR / name).write_text(text)
    print(f"wrote {', '.join(OUTPUTS)} to {PROTO_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
