"""Run qairt-dev's MHA -> SHA pass on a model (executed by the qairt venv's Python 3.12).

    python qairt_convert.py MODEL OUT_DIR PREFIX

Only qairt.optimizer is imported: the package's own __init__ contacts a server at import,
so a bare ``qairt`` module standing for the package directory is put in sys.modules first.
The pass is qairt.optimizer.onnx.convert_mha_to_sha on a GraphContext (read from its
installed source: qairt/optimizer/onnx/passes/mha2sha/mha2sha_pass.py).
"""

import importlib.util
import sys
import types

spec = importlib.util.find_spec("qairt")
package = types.ModuleType("qairt")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["qairt"] = package

from qairt.optimizer.onnx import GraphContext, convert_mha_to_sha  # noqa: E402

source, out_dir, prefix = sys.argv[1:4]
ctx = GraphContext.from_files(source)
convert_mha_to_sha(ctx)
print(ctx.export(out_dir, prefix=prefix).onnx_path)
