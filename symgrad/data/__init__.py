"""Data files bundled with symgrad (see ``LICENSE-digits.txt``)."""
