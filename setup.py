"""Adds the course environment's start-up hook to the wheel (see fl_tutorial/pysyft/startup.py).

A .pth file in site-packages runs its `import` line whenever Python starts. The
hook is copied to the top-level module `fl_tutorial_startup`, so that start-up
does not import the `fl_tutorial` package itself (a script's own copy must win).
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_LINE = "import fl_tutorial_startup; fl_tutorial_startup.install()\n"


class BuildWithStartupHook(build_py):
    def run(self):
        super().run()
        self.copy_file(os.path.join("fl_tutorial", "pysyft", "startup.py"),
                       os.path.join(self.build_lib, "fl_tutorial_startup.py"))
        with open(os.path.join(self.build_lib, "fl_tutorial_startup.pth"), "w") as pth:
            pth.write(PTH_LINE)

    def get_outputs(self, include_bytecode=True):
        extra = [os.path.join(self.build_lib, name) for name in ("fl_tutorial_startup.py", "fl_tutorial_startup.pth")]
        return super().get_outputs(include_bytecode) + extra


setup(cmdclass={"build_py": BuildWithStartupHook})
