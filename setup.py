"""Install the top-level data folders (flavors/, overlays/, templates/, sbom/) inside the package.

The data lives outside the code in the repository, as the design asks; an installed copy needs
it beside the modules, so the build step copies it to kairos_build/data/.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_DIRS = ("flavors", "overlays", "templates", "sbom")


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "kairos_build" / "data"
        for name in DATA_DIRS:
            shutil.rmtree(target / name, ignore_errors=True)
            # symlinks=True keeps links inside overlays/ as links instead of copying targets.
            shutil.copytree(Path(__file__).parent / name, target / name, symlinks=True)


setup(cmdclass={"build_py": BuildWithData})
