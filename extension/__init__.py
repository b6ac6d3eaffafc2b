"""llamalab.extension: the Jupyter server extension, IPython magics and ipywidgets chat (see issue 4)."""
