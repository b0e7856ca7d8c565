"""Host syncs per training step on the Gaudi stack (optimum-habana 1.21.2, transformers 4.55), for `make bench`.

    .venv-gaudi/bin/python -m bench.gaudi_syncs --workload '{"encoder_layers": 6, ...}' --steps 2

Runs bench/run_bench.py's `syncs_per_step` (stock vs ours, same workload) with transformers as Gaudi trains it:
`adapt_transformers_to_gaudi()` applied. Off Gaudi it uses the stand-ins CI uses (tests/gaudi/stand_ins.py); the
counts are those of an HPU run (see detr_ft/train/sync_audit.py). Prints one JSON line: stack, syncs_per_step,
syncs_by_op.
"""

from __future__ import annotations

import argparse
import json
import sys

from tests.gaudi.stand_ins import HpuTensorsOnCpu, expose


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="{}", help="bench.workload.Workload fields, as JSON")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    if not expose():
        raise SystemExit("optimum-habana is not installed: run this in .venv-gaudi")
    from optimum.habana.transformers.modeling_utils import adapt_transformers_to_gaudi

    from bench.run_bench import syncs_per_step
    from bench.workload import PATHS, Workload
    from detr_ft.train.run_summary import stack_versions

    adapt_transformers_to_gaudi()
    with HpuTensorsOnCpu():
        syncs = syncs_per_step(Workload(**json.loads(args.workload)), args.steps)
    print(json.dumps({"stack": stack_versions(), "syncs_per_step": {path: syncs[path]["per_step"] for path in PATHS},
                      "syncs_by_op": {path: syncs[path]["by_op"] for path in PATHS}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
