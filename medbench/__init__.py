"""medbench: a benchmark harness for medical vision-language models.

Importing medbench has no side effects: no torch import, no device setup, no downloads.
"""

__version__ = "0.1.0"
