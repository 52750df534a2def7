from pathlib import Path

from setuptools import find_packages, setup

version = next(
    line.split('"')[1]
    for line in Path("getlocal/__init__.py").read_text().splitlines()
    if line.startswith("__version__")
)

demo = ["numpy", "torch", "timm", "matplotlib", "Pillow", "tqdm", "safetensors"]

setup(
    name="getlocal",
    version=version,
    description="Capture any named local variable (attention maps above all) out of deep models, at zero cost when off",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # The adapters live in the top-level folder adapters/ but install as
    # getlocal.adapters: a top-level module named `adapters` is another PyPI project.
    packages=["getlocal", *(f"getlocal.{p}" for p in find_packages("getlocal")),
              "getlocal.adapters", *(f"getlocal.adapters.{p}" for p in find_packages("adapters"))],
    package_dir={"getlocal": "getlocal", "getlocal.adapters": "adapters"},
    install_requires=[
        # bytecode 0.17 is the last release for 3.9 and 3.10; 0.19 adds what 3.13 needs.
        "bytecode>=0.16.1; python_version < '3.11'",
        "bytecode>=0.19; python_version >= '3.11'",
    ],
    extras_require={
        "demo": demo,
        "adapters": ["transformers"],
        # setuptools: the packaging test builds the wheel with the installed one (70.1 has bdist_wheel built in)
        "test": demo + ["transformers", "pytest", "hypothesis", "cloudpickle", "nbformat", "nbclient", "ipykernel",
                        "selenium", "setuptools>=70.1"],
    },
    entry_points={"console_scripts": ["getlocal=getlocal.__main__:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
