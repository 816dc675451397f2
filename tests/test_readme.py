"""The README's two commands are the contract with a newcomer; CI must run exactly the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command():
    blocks = _bash_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    test_command = next(block for block in blocks if "pytest" in block)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert test_command in ci_lines


def test_readme_quickstart_installs_and_runs_the_quickstart_preset():
    quickstart = _bash_blocks((ROOT / "README.md").read_text(encoding="utf-8"))[0]
    assert "pip install -r requirements.txt" in quickstart
    assert "train.py --experiment margin_loss_resnet50 --preset quickstart" in quickstart
