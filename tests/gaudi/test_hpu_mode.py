"""HPU lazy or eager mode is what the flags say: `habana_frameworks.torch` loads its lazy or its eager bridge once,
when it is first imported, from PT_HPU_LAZY_MODE (unset: eager since Gaudi software 1.21, lazy before), so the entry
must set that variable from `--use_lazy_mode` before anything imports habana_frameworks. Building TrainingArguments
does: its `__post_init__` sets up the device, and accelerate's device lookup imports habana_frameworks.torch where it
is installed. Set after that, the variable changed nothing and a run asked for lazy mode ran eager (or the reverse).

Each case runs the entry in a fresh process (the import happens once per process) with the stand-in habana_frameworks
and records PT_HPU_LAZY_MODE at its first import. The run itself stops at the missing dataset, after the flags.
"""

import os
import subprocess
import sys

import pytest

pytest.importorskip("optimum.habana", reason="optimum-habana lives in .venv-gaudi (see requirements-gaudi.txt)")

from entry_runs import REPO  # noqa: E402

FIRST_IMPORT_PROBE = """
import os, sys
sys.path.insert(0, "tests/gaudi")
import stand_ins
stand_ins.expose()
seen = []

class FirstImport:
    def find_spec(self, name, path, target=None):
        if name == "habana_frameworks.torch" and not seen:
            seen.append(os.environ.get("PT_HPU_LAZY_MODE"))
        return None

sys.meta_path.insert(0, FirstImport())
import run_object_detection
status = run_object_detection.main(sys.argv[1:])
print("status", status, "PT_HPU_LAZY_MODE at the first import of habana_frameworks.torch:", seen)
"""


@pytest.mark.parametrize(("flags", "mode"), [(["--use_habana", "--use_lazy_mode"], "1"), (["--use_habana"], "0")],
                         ids=["lazy", "eager"])
def test_habana_frameworks_is_first_imported_in_the_mode_the_flags_ask_for(tmp_path, flags, mode):
    environment = {name: value for name, value in os.environ.items() if name != "PT_HPU_LAZY_MODE"}
    argv = [*flags, "--dataset_dir", str(tmp_path / "no_dataset"), "--output_dir", str(tmp_path / "run"),
            "--report_to", "none"]
    probe = subprocess.run([sys.executable, "-c", FIRST_IMPORT_PROBE, *argv], cwd=REPO, env=environment,
                           capture_output=True, text=True, timeout=300)

    assert f"status 2 PT_HPU_LAZY_MODE at the first import of habana_frameworks.torch: ['{mode}']" in probe.stdout, \
        probe.stdout[-2000:] + probe.stderr[-3000:]
