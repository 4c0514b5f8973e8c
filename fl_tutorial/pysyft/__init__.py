"""syft 0.2.6 in one process: the checked environment, what syft may unpickle, visits, training on the owner.

env.import_syft() checks Python 3.8, torch 1.4.0 and syft 0.2.6 before syft is imported,
and installs wire.py's checks in every syft process. Below it: privacy/ and core/ only.
"""
