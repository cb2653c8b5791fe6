"""Build script: the console script comes from pyproject.toml; this file adds the C fusion extension.

The extension is plain C on numpy (no torch), built with OpenMP where the compiler has it. If it
cannot be built, the install still succeeds and cervrt falls back to its numpy reference with a
warning at run time.
"""

from __future__ import annotations

import copy
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the fusion extension with OpenMP if possible, without it if not, and never fail the install."""

    def build_extension(self, ext: Extension) -> None:
        if self.compiler.compiler_type == "unix" and sys.platform != "darwin":
            try:
                super().build_extension(_with_openmp(ext))
                return
            except Exception as exc:
                print(f"cervrt: building {ext.name} with OpenMP failed ({exc}); retrying without", file=sys.stderr)
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"cervrt: could not build {ext.name} ({exc}); the numpy reference will be used", file=sys.stderr)


def _with_openmp(ext: Extension) -> Extension:
    flags = ["-fopenmp"]
    omp = copy.copy(ext)
    omp.extra_compile_args = [*ext.extra_compile_args, *flags]
    omp.extra_link_args = [*ext.extra_link_args, *flags]
    omp.define_macros = [*ext.define_macros, ("CERVRT_OPENMP", "1")]
    return omp


def _numpy_include() -> str:
    import numpy

    return numpy.get_include()


_CSRC = os.path.join("cervrt", "csrc")

setup(
    ext_modules=[
        Extension(
            "cervrt._fusion",
            sources=[os.path.join(_CSRC, "fusion.c")],
            include_dirs=[_numpy_include(), _CSRC],
            depends=[os.path.join(_CSRC, "fusion_math.h")],
            extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off"] if os.name != "nt" else [],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_20_API_VERSION")],
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
