"""HyperCT Viewer: the napari plugin (reader, sample data, Findings and Task Embeddings widgets).

It only wires the ``hyperct`` engine to napari layers and widgets; it holds no model or imaging logic.
"""

__version__ = "0.1.0"
