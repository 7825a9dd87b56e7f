from setuptools import setup

# kernels/ is installed as iso3d.kernels: a top-level "kernels" module would shadow the PyPI
# package of that name.
setup(
    packages=["iso3d", "iso3d.utils", "iso3d.data", "iso3d.export", "iso3d.io", "iso3d.nerf", "iso3d.models", "iso3d.pipelines", "iso3d.sds", "iso3d.training", "iso3d.evaluation", "iso3d.kernels"],
    package_dir={"iso3d": "iso3d", "iso3d.kernels": "kernels"},
    package_data={"iso3d": ["assets/*/*.json", "assets/*/*.safetensors", "assets/*/*.md", "assets/*/*.png"]},
)
