"""What habana_frameworks reads once, when it is first imported, is what the flags say. `habana_frameworks.torch`
loads its lazy or its eager bridge from PT_HPU_LAZY_MODE (unset: eager in current Gaudi software, lazy in older
releases), and Habana's autocast reads its op lists from the files PT_HPU_AUTOCAST_LOWER_PRECISION_OPS_LIST and
PT_HPU_AUTOCAST_FP32_OPS_LIST name (GaudiConfig refuses to declare them once it is imported). So the entry must set
them from `--use_lazy_mode` and `--gaudi_config_name` before anything imports habana_frameworks. Building
TrainingArguments does: its `__post_init__` sets up the device, and accelerate's device lookup imports
habana_frameworks.torch where it is installed. Set after that, PT_HPU_LAZY_MODE changed nothing and a run asked for
lazy mode ran eager (or the reverse).

Each case runs the entry in a fresh process (the import happens once per process) with the stand-in habana_frameworks
and records the variables at its first import. The run itself stops at the missing dataset, after the flags.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("optimum.habana", reason="optimum-habana lives in .venv-gaudi (see requirements-gaudi.txt)")

from entry_runs import REPO  # noqa: E402

READ_AT_IMPORT = ("PT_HPU_LAZY_MODE", "PT_HPU_AUTOCAST_LOWER_PRECISION_OPS_LIST", "PT_HPU_AUTOCAST_FP32_OPS_LIST")
FIRST_IMPORT_PROBE = """
import json, os, sys
sys.path.insert(0, "tests/gaudi")
import stand_ins
stand_ins.expose()
seen = []

class FirstImport:
    def find_spec(self, name, path, target=None):
        if name == "habana_frameworks.torch" and not seen:
            seen.append({name: value for name, value in os.environ.items() if name.startswith("PT_HPU_")})
        return None

sys.meta_path.insert(0, FirstImport())
import run_object_detection
status = run_object_detection.main(sys.argv[1:])
print(json.dumps({"status": status, "first_import": seen}))
"""


def environment_at_first_import(tmp_path: Path, flags: list[str]) -> dict[str, str | None]:
    """The variables of READ_AT_IMPORT when the entry, run with `flags`, first imports habana_frameworks.torch."""
    environment = {name: value for name, value in os.environ.items() if name not in READ_AT_IMPORT}
    argv = [*flags, "--dataset_dir", str(tmp_path / "no_dataset"), "--output_dir", str(tmp_path / "run"),
            "--report_to", "none"]
    probe = subprocess.run([sys.executable, "-c", FIRST_IMPORT_PROBE, *argv], cwd=REPO, env=environment,
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.splitlines()[-1])
    assert result["status"] == 2, probe.stderr[-3000:]  # stopped at the missing dataset, after the flags
    assert len(result["first_import"]) == 1, "habana_frameworks.torch was never imported"
    return {name: result["first_import"][0].get(name) for name in READ_AT_IMPORT}


@pytest.mark.parametrize(("flags", "mode"), [(["--use_habana", "--use_lazy_mode"], "1"), (["--use_habana"], "0")],
                         ids=["lazy", "eager"])
def test_habana_frameworks_is_first_imported_in_the_mode_the_flags_ask_for(tmp_path, flags, mode):
    assert environment_at_first_import(tmp_path, flags)["PT_HPU_LAZY_MODE"] == mode


def test_the_gaudi_configs_autocast_op_lists_are_declared_before_habana_frameworks_is_imported(tmp_path):
    config = {"use_torch_autocast": True, "autocast_bf16_ops": ["matmul", "linear"], "autocast_fp32_ops": ["softmax"]}
    (tmp_path / "gaudi_config.json").write_text(json.dumps(config))
    flags = ["--use_habana", "--use_lazy_mode", "--bf16", "--gaudi_config_name", str(tmp_path / "gaudi_config.json")]

    seen = environment_at_first_import(tmp_path, flags)

    declared = [seen["PT_HPU_AUTOCAST_LOWER_PRECISION_OPS_LIST"], seen["PT_HPU_AUTOCAST_FP32_OPS_LIST"]]
    assert None not in declared
    assert [Path(path).read_text().split() for path in declared] == [["matmul", "linear"], ["softmax"]]


def test_a_gaudi_config_that_cannot_be_loaded_is_a_device_settings_error(tmp_path, monkeypatch):
    from detr_ft.config import DeviceArguments
    from detr_ft.train.devices import DeviceSettingsError, check_device_settings

    monkeypatch.setenv("PT_HPU_LAZY_MODE", "0")  # eager, as asked; restored after the test
    missing = tmp_path / "no_such_gaudi_config.json"
    with pytest.raises(DeviceSettingsError, match=f"--gaudi_config_name {missing}"):
        check_device_settings(DeviceArguments(use_habana=True, gaudi_config_name=str(missing)))
