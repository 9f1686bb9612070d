#!/usr/bin/env bash
# Install graphopt from its wheel, non-editable, into a fresh virtual environment, and use it
# from outside the repository: the CLI, a recipe, a tiny compile + graphopt.load.
# Dependencies come from the development venv (a .pth file points at its site-packages), so
# this takes seconds, not a second 6 GB install; graphopt itself comes only from the wheel.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEV="$(cd "${1:-$ROOT/.venv}" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/src"
git -C "$ROOT" ls-files -co --exclude-standard -z | (cd "$ROOT" && xargs -0 cp --parents -t "$WORK/src")
"$DEV/bin/python" -m pip wheel --no-deps --no-build-isolation -q -w "$WORK/dist" "$WORK/src"
python3 -m venv --without-pip "$WORK/venv"
SITE="$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
DEV_SITE="$("$DEV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$DEV_SITE" > "$SITE/dev-dependencies.pth"
"$DEV/bin/python" -m pip install -q --no-deps --no-compile --target "$SITE" "$WORK"/dist/*.whl
cd "$WORK"
PY="$WORK/venv/bin/python"
# Every package of the source tree must come from the wheel (a moved or new sub-package that the
# packaging misses fails here, not on a user's machine).
(cd "$ROOT" && git ls-files -co --exclude-standard -- 'graphopt/**__init__.py' 'passes/**__init__.py' 'graphopt/__init__.py' 'passes/__init__.py') \
  | sed -e 's#/__init__.py$##' -e 's#^passes#graphopt/passes#' -e 's#/#.#g' | sort -u > packages.txt
"$PY" - <<'PY'
import importlib
names = open("packages.txt").read().split()
assert "graphopt.passes" in names and len(names) > 10, names
for name in names:
    module = importlib.import_module(name)
    assert "/venv/" in module.__file__ and "/src/" not in module.__file__, module.__file__
print(f"wheel import ok: {len(names)} packages from", importlib.import_module("graphopt").__file__)
PY
"$PY" -m graphopt.cli passes > passes.txt
grep -q channel_pruning passes.txt
cat > tiny.py <<'PY'
import torch
def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
PY
cat > tiny.yaml <<'YAML'
model: {python: "tiny:model"}
inputs: [{shape: [1, 3, 8, 8]}]
passes: [{pass: fold_batch_norm}, {pass: channel_pruning, ratio: 0.5}]
compile: {target: llvm, tuning: null}
output_dir: out
YAML
"$PY" -m graphopt.cli run tiny.yaml > run.txt
"$PY" - <<'PY'
import numpy as np, graphopt, torch
artifact = graphopt.load("out/artifact")
model = graphopt.load_model("out/model.pt")
x = torch.randn(1, 3, 8, 8)
with torch.no_grad():
    np.testing.assert_allclose(artifact(x.numpy()), model(x).numpy(), rtol=1e-4, atol=1e-5)
print("wheel recipe + compile + load ok")
PY
