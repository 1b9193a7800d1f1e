"""setuptools: everything is in pyproject.toml except one file outside the package, ``ptbr-lm-eval.pth``.

The .pth file (``ptbr/bench/ptbr-lm-eval.pth``) goes to the top of site-packages, where Python runs it at start:
it is how the stock ``lm_eval`` command learns ``--model ptbr`` (see ``ptbr/bench/lm_eval_hook.py``). A wheel
carries it at its root; an editable install (``pip install -e .``) writes it beside its own
``__editable__.ptbr-*.pth``, which sorts first and so makes ``ptbr`` importable before this one runs.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = Path(__file__).resolve().parent / "ptbr" / "bench" / "ptbr-lm-eval.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # the editable wheel is assembled in install's directory
            target = Path(self.get_finalized_command("install").install_lib)
        else:
            target = Path(self.build_lib)
        target.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(PTH), str(target / PTH.name))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH.name)]


setup(cmdclass={"build_py": BuildPyWithPth})
