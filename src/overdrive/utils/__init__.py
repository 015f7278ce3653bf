"""Names Accelerate users import from ``accelerate.utils``.

Example:
    >>> from overdrive.utils import set_seed
    >>> set_seed(0)
"""
