"""Rewrite schemas/raycluster-v1.schema.json from KubeRay's RayCluster CRD (the ray.io/v1 version's
openAPIV3Schema only, compact JSON; the CRD itself is ~0.9 MB of YAML).

    python tests/deploy/vendor_kuberay_crd.py path/to/ray.io_rayclusters.yaml v1.7.0 COMMIT

The CRD is ray-operator/config/crd/bases/ray.io_rayclusters.yaml in github:ray-project/kuberay.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).with_name("schemas") / "raycluster-v1.schema.json"


def main(crd_path: str, tag: str, commit: str) -> None:
    crd = yaml.safe_load(Path(crd_path).read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    vendored = {"source": "github:ray-project/kuberay ray-operator/config/crd/bases/ray.io_rayclusters.yaml",
                "version": tag, "commit": commit, "openAPIV3Schema": v1["schema"]["openAPIV3Schema"]}
    OUT.write_text(json.dumps(vendored, sort_keys=True, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
