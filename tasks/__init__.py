"""medbench subpackage."""
