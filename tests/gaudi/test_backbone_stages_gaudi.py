"""tests/test_backbone_stages.py again on the Gaudi stack (transformers 4.55.4, adapted to Gaudi by conftest.py)."""

import pytest

pytest.importorskip("optimum.habana", reason="optimum-habana lives in .venv-gaudi (see requirements-gaudi.txt)")

from test_backbone_stages import (  # noqa: E402, F401 (collected here too)
    test_patch_trains_stages_1_to_3_only,
    test_stock_transformers_does_not_train_detr_stages,
)
