"""Package hygiene: a cheap import and the public names."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_pull_optional_dependencies():
    code = (
        "import sys, transformers_rime; "
        "print([m for m in ('trl', 'sentence_transformers', 'peft', 'datasets', 'flash_attn', 'torchvision') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_public_api_names():
    import transformers_rime

    for name in ("RimeConfig", "RimeProcessor", "RimeForEmbedding", "RimeEncoder", "SearchHit", "RimeGeneration"):
        assert getattr(transformers_rime, name).__name__ == name
    for name in ("RimeContrastiveConfig", "RimeContrastiveTrainer", "RimeContrastiveCollator"):
        assert getattr(transformers_rime, name).__name__ == name
    from transformers_rime.losses import cross_mode_alignment, info_nce

    assert callable(info_nce) and callable(cross_mode_alignment)
