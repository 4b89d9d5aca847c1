"""kela-file-broker: the file exchange between Kela and municipal organisations."""

__version__ = "0.1.0"
